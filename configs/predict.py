"""Settings of the Lotus prediction stage (``lotus3d predict``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .base import setting


@dataclass
class PredictConfig:
    depth_model: str = setting(
        "jingheya/lotus-depth-g-v2-1-disparity",
        "depth checkpoint: a Hugging Face id or a local diffusers folder ('none' to skip depth)",
        flag="--model",
    )
    normal_model: str | None = setting(
        "jingheya/lotus-normal-g-v1-1",
        "normal checkpoint: a Hugging Face id or a local folder ('none' to skip normals)",
    )
    depth_kind: Literal["auto", "disparity", "depth"] = setting(
        "auto", "what the depth checkpoint predicts; auto reads lotus3d.json or the checkpoint's name"
    )
    processing_res: int = setting(768, "longest edge the model sees, in pixels (0: the image's own size)")
    latent: Literal["sample", "mode"] = setting(
        "sample", "VAE latent: 'sample' as the official code, or the deterministic 'mode'"
    )
    resize_back: Literal["nearest", "bilinear"] = setting(
        "nearest", "resampling of the output back to the image size ('nearest' as the official code)"
    )
    seed: int = setting(42, "seed of the latent sampling and the G models' noise (same for every image)")
    batch_size: int = setting(1, "images per forward pass (same-size images only)")
    device: str = setting("auto", "torch device: auto (cuda if available, else cpu), cpu, cuda, cuda:1 ...")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = setting(
        "auto", "model precision: auto = float16 on CUDA, float32 on CPU"
    )
    backend: Literal["torch", "openvino"] = setting(
        "torch",
        "inference engine: torch, or openvino (CPU, float32; pip install 'lotus3d[openvino]'; each network "
        "is converted once per machine and image shape, then cached; falls back to torch when unavailable)",
    )
    share_encode: bool = setting(True, "encode each image once when both checkpoints' VAEs are identical")
    ray_cpus_per_worker: int = setting(1, "with --ray on machines without GPUs: CPUs (torch threads) per worker")
    on_error: Literal["skip", "fail"] = setting(
        "skip", "an unreadable image: 'skip' it (reported by name) or 'fail' the run"
    )
