"""Lotus inference: affine-invariant depth (or disparity) and surface normals from one image.

The computation follows the official Lotus pipeline step by step (``docs/inference.md``):

1. RGB in [0, 1] -> [-1, 1]; resize so the longest edge is ``processing_res`` (bilinear, antialias).
2. ``z = vae.encode(x).latent_dist.sample() * scaling_factor`` (``latent="mode"`` takes the mean).
3. Empty prompt, tokenised without padding, through the CLIP text encoder (computed once per model).
4. Task switcher ``class_labels = [sin 1, sin 0, cos 1, cos 0]`` (the prediction branch).
5. One UNet call at t = 999. G models see ``cat([z, noise])``, D models ``z`` alone; the UNet
   predicts x0, which is the output latent.
6. ``y = (vae.decode(z_out / scaling_factor) / 2 + 0.5).clamp(0, 1)``, resized back to the input
   size (nearest, as the official code; ``resize_back="bilinear"`` is an option).
7. Depth / disparity = mean of the 3 channels. Normals: ``n = 2 y - 1`` in Lotus axes, converted at
   this boundary to the project convention ``n_cv = -n`` (OpenCV camera frame, facing the camera).

Speed on CPU: when the depth and normal checkpoints carry identical VAE weights (checked, not
assumed) the image is encoded once for both; the prompt embedding is computed once at load and
the text encoder is freed; inference runs under ``torch.inference_mode`` with the VAE in
``channels_last`` memory format, and each nearest-2x-then-3x3-conv upsampler of the VAE decoder
runs as one transposed convolution (:mod:`lotus3d.upsampling`: the same function, 4 instead of 9
multiply-adds per output, equal up to rounding). ``backend="openvino"`` runs the VAE and UNet on
OpenVINO's CPU kernels instead (:mod:`lotus3d.predict_openvino`); the steps around them are the
same code.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from .configs import PredictConfig
from .errors import ModelError
from .types import DepthKind, Prediction
from .upsampling import fold_upsamplers

log = logging.getLogger(__name__)

OFFICIAL_CHECKPOINTS = {
    "jingheya/lotus-depth-g-v2-1-disparity": ("depth", "disparity"),
    "jingheya/lotus-depth-d-v2-0-disparity": ("depth", "disparity"),
    "jingheya/lotus-depth-g-v1-0": ("depth", "depth"),
    "jingheya/lotus-depth-d-v1-0": ("depth", "depth"),
    "jingheya/lotus-normal-g-v1-1": ("normal", None),
    "jingheya/lotus-normal-d-v1-1": ("normal", None),
}
REQUIRED_FILES = ("unet/config.json", "vae/config.json", "scheduler/scheduler_config.json")
TEXT_FILES = ("text_encoder/config.json", "tokenizer")
TIMESTEP = 999
Variant = Literal["g", "d"]
Backend = Literal["torch", "openvino"]


# ------------------------------------------------------------------------------ checkpoint loading
def resolve_checkpoint(name_or_path: str | os.PathLike, local_files_only: bool | None = None) -> Path:
    """A local folder for a Lotus checkpoint given a folder or a Hugging Face id.

    Looks in the Hugging Face cache first, then downloads unless offline (``HF_HUB_OFFLINE=1`` or
    ``local_files_only``).

    Raises:
        ModelError: the folder does not exist, or the id is neither cached nor downloadable; the
            message says how to get the weights.
    """
    p = Path(os.path.expanduser(str(name_or_path)))
    if p.is_dir():
        return p
    name = str(name_or_path)
    if p.exists() or name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise ModelError(f"model folder not found: {name}")
    from huggingface_hub import snapshot_download

    patterns = ["model_index.json", "*.json", "*.txt", "*.safetensors", "tokenizer/*"]
    try:
        return Path(snapshot_download(name, allow_patterns=patterns, local_files_only=True))
    except Exception:
        pass
    offline = local_files_only or os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    if not offline:
        try:
            return Path(snapshot_download(name, allow_patterns=patterns))
        except Exception as e:  # network, auth, unknown repo
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        else:  # pragma: no cover - returned above
            raise AssertionError
    else:
        reason = "offline and not in the local Hugging Face cache"
    raise ModelError(
        f"Lotus weights {name!r} are not available ({reason}).\n"
        f"  Download them once with:  huggingface-cli download {name}\n"
        f"  or point to a local copy: --model PATH (a folder with unet/, vae/, scheduler/, text_encoder/, tokenizer/)"
    )


def inspect_checkpoint(path: str | os.PathLike) -> dict:
    """Check that ``path`` is a Lotus checkpoint and read what it is.

    Returns:
        {"variant": "g" | "d", "in_channels": int, "has_text_encoder": bool}

    Raises:
        ModelError: naming the missing files, or why the UNet is not a Lotus UNet.
    """
    path = Path(path)
    missing = [f for f in REQUIRED_FILES if not (path / f).exists()]
    if missing:
        raise ModelError(
            f"{path} is not a Lotus checkpoint: missing {', '.join(missing)} "
            "(expected a diffusers folder with unet/, vae/, scheduler/, text_encoder/, tokenizer/)"
        )
    cfg = json.loads((path / "unet/config.json").read_text())
    if cfg.get("class_embed_type") != "projection" or cfg.get("projection_class_embeddings_input_dim") != 4:
        raise ModelError(
            f"{path} is not a Lotus checkpoint: its UNet has class_embed_type={cfg.get('class_embed_type')!r}, "
            f"projection_class_embeddings_input_dim={cfg.get('projection_class_embeddings_input_dim')!r} "
            "(Lotus uses a 'projection' class embedding of dim 4, the task switcher)"
        )
    in_ch = cfg.get("in_channels")
    if in_ch not in (4, 8):
        raise ModelError(f"{path}: UNet in_channels={in_ch}; Lotus G has 8 (image + noise latents), D has 4")
    has_text = all((path / f).exists() for f in TEXT_FILES)
    return {"variant": "g" if in_ch == 8 else "d", "in_channels": in_ch, "has_text_encoder": has_text}


def guess_depth_kind(name: str, path: Path) -> DepthKind:
    """Whether a depth checkpoint predicts disparity or depth.

    Order: a ``lotus3d.json`` file in the folder ({"depth_kind": ...}); the official ids; the name
    or path containing "disparity" (disparity) or "depth" (depth). Otherwise disparity, the kind
    of the recommended v2 models, with a warning (override with ``depth_kind``).
    """
    marker = path / "lotus3d.json"
    if marker.is_file():
        kind = json.loads(marker.read_text()).get("depth_kind")
        if kind in ("disparity", "depth"):
            return kind
    if name in OFFICIAL_CHECKPOINTS and OFFICIAL_CHECKPOINTS[name][1]:
        return OFFICIAL_CHECKPOINTS[name][1]
    text = f"{name} {path}".lower()
    if "disparity" in text:
        return "disparity"
    if "depth" in text:
        return "depth"
    log.warning("cannot tell whether %s predicts disparity or depth; assuming disparity (set depth_kind)", name)
    return "disparity"


@dataclass
class LotusModel:
    """One loaded Lotus checkpoint, ready for single-step inference.

    ``prompt_embeds`` (1, L, C) is the empty-prompt embedding; the text encoder is not kept.
    """

    name: str
    path: Path
    variant: Variant
    unet: torch.nn.Module  # or predict_openvino.OpenVINOUNet: called alike
    vae: torch.nn.Module  # or predict_openvino.OpenVINOVae
    prompt_embeds: torch.Tensor
    init_noise_sigma: float

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)


def load_lotus(
    name_or_path: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    vae: torch.nn.Module | None = None,
    local_files_only: bool | None = None,
    backend: Backend = "torch",
    openvino_config: dict | None = None,
) -> LotusModel:
    """Load a Lotus checkpoint (Hugging Face id or local diffusers folder) with diffusers.

    Args:
        vae: an already-loaded VAE to use instead of the checkpoint's (only pass one whose
            weights equal the checkpoint's; see :func:`vae_weights_equal`).
        backend: "torch", or "openvino" (CPU, float32): the UNet and VAE become
            :mod:`lotus3d.predict_openvino` networks, converted on first use and cached on disk.
        openvino_config: OpenVINO compile properties (see :func:`lotus3d.predict_openvino.compile_config`).
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    _quiet_loading()
    path = resolve_checkpoint(name_or_path, local_files_only)
    info = inspect_checkpoint(path)
    if not info["has_text_encoder"]:
        raise ModelError(f"{path} is not a complete Lotus checkpoint: missing text_encoder/ or tokenizer/")
    try:
        if backend == "openvino":
            from . import predict_openvino as pov

            def loader(cls, subfolder: str):  # the torch weights, read only to convert a network
                def load() -> torch.nn.Module:
                    _quiet_loading()
                    return cls.from_pretrained(path, subfolder=subfolder, torch_dtype=torch.float32)

                return load

            cfg, index = openvino_config or pov.compile_config(), pov.cache_root() / "hashes.json"
            unet = pov.OpenVINOUNet(path, loader(UNet2DConditionModel, "unet"), cfg, index)
            vae = vae if vae is not None else pov.OpenVINOVae(path, loader(AutoencoderKL, "vae"), cfg, index)
        else:
            unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=dtype)
            if vae is None:
                vae = AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=dtype)
        scheduler = DDIMScheduler.from_pretrained(path, subfolder="scheduler")
        prompt_embeds = empty_prompt_embedding(path, device, dtype)
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(f"cannot load the Lotus checkpoint at {path}: {e}") from None
    if backend == "torch":
        # the decoder's upsamplers as transposed convs (upsampling.py): 6 s less per image on SD2 sizes.
        # Not the UNet's: 0.5 s for 0.4 GB more (the folded weights beside the mapped safetensors file)
        fold_upsamplers(vae)
        unet.to(device).eval().requires_grad_(False)
        vae.to(device).eval().requires_grad_(False)
        if torch.device(device).type == "cpu":
            vae.to(memory_format=torch.channels_last)
    return LotusModel(
        name=str(name_or_path),
        path=path,
        variant=info["variant"],
        unet=unet,
        vae=vae,
        prompt_embeds=prompt_embeds,
        init_noise_sigma=float(getattr(scheduler, "init_noise_sigma", 1.0)),
    )


@torch.inference_mode()
def empty_prompt_embedding(path: Path, device: str | torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(1, L, C) CLIP embedding of the empty prompt, tokenised WITHOUT padding (BOS, EOS only).

    The text encoder is loaded for this one call and released.
    """
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
    encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", torch_dtype=dtype).to(device)
    ids = tokenizer("", padding="do_not_pad", return_tensors="pt").input_ids.to(device)
    emb = encoder(ids)[0].detach().clone()
    del encoder
    return emb


def _quiet_loading() -> None:
    """No per-file loading bars from transformers / diffusers (lotus3d shows its own progress)."""
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    tlog.disable_progress_bar()
    tlog.set_verbosity_error()
    dlog.disable_progress_bar()
    dlog.set_verbosity_error()


def vae_weights_equal(path_a: Path, path_b: Path) -> bool:
    """Compare two checkpoints' VAE weights without building the models (safetensors, mmap)."""
    from safetensors import safe_open

    def files(p: Path) -> list[Path]:
        return sorted((p / "vae").glob("*.safetensors"))

    fa, fb = files(path_a), files(path_b)
    if not fa or not fb:
        return False
    if [f.stat().st_size for f in fa] != [f.stat().st_size for f in fb]:
        return False
    if [f.resolve() for f in fa] == [f.resolve() for f in fb]:
        return True
    for x, y in zip(fa, fb, strict=True):
        with safe_open(x, "pt") as ha, safe_open(y, "pt") as hb:
            if set(ha.keys()) != set(hb.keys()):
                return False
            for k in ha.keys():
                if not torch.equal(ha.get_tensor(k), hb.get_tensor(k)):
                    return False
    return True


# --------------------------------------------------------------------------- functional inference
def task_class_labels(batch: int, device, dtype) -> torch.Tensor:
    """(B, 4) task-switcher embedding for the prediction branch: cat(sin([1, 0]), cos([1, 0]))."""
    e = torch.tensor([1.0, 0.0])
    return torch.cat([torch.sin(e), torch.cos(e)]).to(device=device, dtype=dtype).expand(batch, 4)


def processing_size(height: int, width: int, processing_res: int) -> tuple[int, int]:
    """(h, w) after resizing so that the longest edge is ``processing_res`` (0: unchanged)."""
    if processing_res <= 0:
        return height, width
    f = min(processing_res / width, processing_res / height)
    return int(height * f), int(width * f)


def preprocess(images: torch.Tensor, processing_res: int) -> torch.Tensor:
    """[B, 3, H, W] RGB in [0, 1] -> [B, 3, h, w] in [-1, 1] at the processing resolution."""
    h, w = processing_size(images.shape[-2], images.shape[-1], processing_res)
    x = images * 2.0 - 1.0
    if (h, w) != tuple(images.shape[-2:]):
        x = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    return x


def encode(
    vae: torch.nn.Module,
    x: torch.Tensor,
    generator: torch.Generator | list[torch.Generator] | None,
    latent: str = "sample",
) -> torch.Tensor:
    """[B, 3, h, w] in [-1, 1] -> [B, 4, h/8, w/8] scaled latent (sampled, or the mode).

    ``generator`` may be a list (one per image) so that each image's draw is independent of batching.
    """
    x = x.to(dtype=vae.dtype).contiguous(memory_format=torch.channels_last)
    dist = vae.encode(x).latent_dist
    z = dist.mode() if latent == "mode" else dist.sample(generator=generator)
    return z * vae.config.scaling_factor


def denoise(
    model: LotusModel, z: torch.Tensor, generator: torch.Generator | list[torch.Generator] | None
) -> torch.Tensor:
    """The single UNet step at t = 999: image latent -> predicted annotation latent."""
    from diffusers.utils.torch_utils import randn_tensor

    b = z.shape[0]
    if model.variant == "g":
        noise = randn_tensor(z.shape, generator=generator, device=z.device, dtype=z.dtype) * model.init_noise_sigma
        inp = torch.cat([z, noise], dim=1)
    else:
        inp = z
    t = torch.full((b,), TIMESTEP, device=z.device, dtype=torch.long)
    emb = model.prompt_embeds.to(device=z.device, dtype=z.dtype).expand(b, -1, -1)
    labels = task_class_labels(b, z.device, z.dtype)
    return model.unet(inp, t, encoder_hidden_states=emb, class_labels=labels, return_dict=False)[0]


def decode(vae: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Scaled latent -> [B, 3, 8h, 8w] in [0, 1]."""
    y = vae.decode(z / vae.config.scaling_factor, return_dict=False)[0]
    return (y.float() / 2 + 0.5).clamp(0, 1)


def resize_back(y: torch.Tensor, size: tuple[int, int], mode: str = "nearest") -> torch.Tensor:
    """[B, C, h, w] -> [B, C, H, W]; ``nearest`` (official) or ``bilinear`` (antialiased)."""
    if tuple(y.shape[-2:]) == tuple(size):
        return y
    if mode == "nearest":
        return F.interpolate(y, size=size, mode="nearest")
    return F.interpolate(y, size=size, mode="bilinear", antialias=True, align_corners=False)


def lotus_normals_to_opencv(y: np.ndarray) -> np.ndarray:
    """Decoded Lotus normals (..., 3) in [0, 1] -> unit normals, OpenCV camera frame, facing the camera.

    Lotus (DSINE convention) encodes a wall facing the camera as (0, 0, +1); in OpenCV axes
    (z forward) the camera-facing normal is (0, 0, -1), so ``n_cv = -(2 y - 1)``.
    """
    n = -(2.0 * y.astype(np.float32) - 1.0)
    norm = np.linalg.norm(n, axis=-1, keepdims=True)
    out = n / np.maximum(norm, 1e-6)
    out[norm[..., 0] < 1e-6] = (0.0, 0.0, -1.0)
    return out.astype(np.float32)


def opencv_normals_to_lotus(n: np.ndarray) -> np.ndarray:
    """Inverse of :func:`lotus_normals_to_opencv` for unit normals: -> Lotus colours in [0, 1]."""
    return ((-n) * 0.5 + 0.5).astype(np.float32)


# ------------------------------------------------------------------------------------- predictor
_DEFAULTS = PredictConfig()  # the defaults live in configs/predict.py (their help text too)


@dataclass
class PredictorOptions:
    """What changes a prediction besides the checkpoints (see :class:`lotus3d.configs.PredictConfig`)."""

    processing_res: int = _DEFAULTS.processing_res
    latent: Literal["sample", "mode"] = _DEFAULTS.latent
    resize_back: Literal["nearest", "bilinear"] = _DEFAULTS.resize_back
    seed: int = _DEFAULTS.seed
    batch_size: int = _DEFAULTS.batch_size
    share_encode: bool = _DEFAULTS.share_encode

    @classmethod
    def from_config(cls, cfg: PredictConfig) -> PredictorOptions:
        return cls(**{f: getattr(cfg, f) for f in cls.__dataclass_fields__})


class LotusPredictor:
    """Depth (or disparity) and normals for images, with one shared encode when possible.

    Use :meth:`from_pretrained`; then :meth:`predict` on (H, W, 3) float images in [0, 1].
    """

    def __init__(
        self,
        depth: LotusModel | None,
        normal: LotusModel | None,
        depth_kind: DepthKind = "disparity",
        options: PredictorOptions | None = None,
        shared_vae: bool = False,
        backend: Backend = "torch",
    ):
        if depth is None and normal is None:
            raise ValueError("need a depth model, a normal model, or both")
        self.depth = depth
        self.normal = normal
        self.depth_kind: DepthKind = depth_kind
        self.options = options or PredictorOptions()
        self.shared_vae = shared_vae and depth is not None and normal is not None
        self.backend: Backend = backend

    @classmethod
    def from_pretrained(
        cls,
        depth_model: str | os.PathLike | None,
        normal_model: str | os.PathLike | None,
        depth_kind: DepthKind | Literal["auto"] = "auto",
        device: str = "auto",
        dtype: str = "auto",
        options: PredictorOptions | None = None,
        local_files_only: bool | None = None,
        backend: Backend = "torch",
    ) -> LotusPredictor:
        """Load the depth and normal checkpoints (either may be None).

        The VAE is shared when both checkpoints hold identical VAE weights (compared tensor by
        tensor) and ``options.share_encode`` is on. ``backend="openvino"`` runs the networks on
        OpenVINO (CPU, float32, or bfloat16 when ``dtype`` says so); without the ``openvino``
        package, or with a CUDA device or float16, it says why and uses torch.
        """
        options = options or PredictorOptions()
        dev, tdtype = resolve_device(device, dtype)
        backend = _usable_backend(backend, dev, tdtype)
        configure_threads()
        ov_config = None
        if backend == "openvino":
            from .predict_openvino import compile_config

            ov_config = compile_config(torch.get_num_threads(), precision="bf16" if tdtype == torch.bfloat16 else "f32")
        dpath = resolve_checkpoint(depth_model, local_files_only) if depth_model else None
        depth = load_lotus(dpath, dev, tdtype, backend=backend, openvino_config=ov_config) if dpath else None
        npath = resolve_checkpoint(normal_model, local_files_only) if normal_model else None
        shared = bool(depth and npath and options.share_encode and vae_weights_equal(dpath, npath))
        normal = (
            load_lotus(
                npath, dev, tdtype, vae=depth.vae if shared else None, backend=backend, openvino_config=ov_config
            )
            if npath
            else None
        )
        if depth is not None:
            depth.name = str(depth_model)
        if normal is not None:
            normal.name = str(normal_model)
        kind: DepthKind = "disparity"
        if depth is not None:
            kind = guess_depth_kind(str(depth_model), depth.path) if depth_kind == "auto" else depth_kind
        log.info(
            "lotus: depth=%s (%s, %s) normal=%s shared VAE=%s backend=%s",
            depth_model,
            depth and depth.variant,
            kind,
            normal_model,
            shared,
            backend,
        )
        return cls(depth, normal, kind, options, shared_vae=shared, backend=backend)

    @property
    def device(self) -> torch.device:
        unet = (self.depth or self.normal).unet
        return unet.device if hasattr(unet, "device") else next(unet.parameters()).device

    def settings(self) -> dict:
        """Everything besides the models that changes the output (the cache's up-to-date check)."""
        return prediction_settings(self.options, (self.depth or self.normal).unet.dtype)

    @torch.inference_mode()
    def predict(self, image: np.ndarray) -> Prediction:
        """(H, W, 3) float RGB in [0, 1] -> Prediction at (H, W)."""
        return self.predict_batch([image])[0]

    @torch.inference_mode()
    def predict_batch(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        """Predict several images of one size in one batch (mixed sizes are split into groups)."""
        out: list[Prediction | None] = [None] * len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            if im.ndim != 3 or im.shape[2] != 3:
                raise ValueError(f"image {i}: expected (H, W, 3), got {im.shape}")
            groups.setdefault(im.shape[:2], []).append(i)
        for (h, w), idx in groups.items():
            bs = max(1, self.options.batch_size)
            for s in range(0, len(idx), bs):
                chunk = idx[s : s + bs]
                batch = torch.from_numpy(np.stack([images[i] for i in chunk])).permute(0, 3, 1, 2)
                depth, normal = self._run(batch.float().to(self.device), (h, w))
                for j, i in enumerate(chunk):
                    out[i] = Prediction(
                        depth=depth[j] if depth is not None else np.full((h, w), np.nan, np.float32),
                        kind=self.depth_kind,
                        normal=normal[j] if normal is not None else None,
                    )
        return out  # type: ignore[return-value]

    def _run(self, images: torch.Tensor, size: tuple[int, int]) -> tuple[np.ndarray | None, np.ndarray | None]:
        o = self.options
        x = preprocess(images, o.processing_res)
        b = x.shape[0]
        latents: dict[int, tuple[torch.Tensor, list[torch.Tensor]]] = {}

        def latent_for(m: LotusModel) -> tuple[torch.Tensor, list[torch.Tensor]]:
            # One encode per distinct VAE, one generator per image (seeded alike, so a view's result
            # does not depend on its batch). The generator states after the encode are replayed for
            # each task, so the shared path draws exactly what two separate runs draw.
            key = id(m.vae)
            if key not in latents:
                gens = [torch.Generator(device=self.device).manual_seed(o.seed) for _ in range(b)]
                z = encode(m.vae, x, gens, o.latent)
                latents[key] = (z, [g.get_state() for g in gens])
            return latents[key]

        results = []
        for m in (self.depth, self.normal):
            if m is None:
                results.append(None)
                continue
            z, states = latent_for(m)
            gens = [torch.Generator(device=self.device) for _ in range(b)]
            for g, st in zip(gens, states, strict=True):
                g.set_state(st)
            y = decode(m.vae, denoise(m, z, gens))
            results.append(resize_back(y, size, o.resize_back).permute(0, 2, 3, 1).cpu().numpy())
        depth = results[0].mean(axis=-1).astype(np.float32) if results[0] is not None else None
        normal = lotus_normals_to_opencv(results[1]) if results[1] is not None else None
        return depth, normal


def _usable_backend(backend: Backend, device: torch.device, dtype: torch.dtype) -> Backend:
    """``backend`` when it can run here, else "torch" with a warning saying why."""
    if backend == "torch":
        return backend
    if backend != "openvino":
        raise ValueError(f"backend must be torch or openvino; got {backend!r}")
    from .predict_openvino import available

    why = None
    if not available():
        why = "the openvino package is not installed (pip install 'lotus3d[openvino]')"
    elif device.type != "cpu":
        why = f"it runs on the CPU and the device is {device}"
    elif dtype not in (torch.float32, torch.bfloat16):
        why = f"it runs in float32 (or bfloat16) and the dtype is {str(dtype).replace('torch.', '')}"
    if why:
        log.warning("OpenVINO backend not used: %s; running Lotus with torch", why)
        return "torch"
    return backend


def resolve_device(device: str = "auto", dtype: str = "auto") -> tuple[torch.device, torch.dtype]:
    """("auto" | "cpu" | "cuda[:i]", "auto" | "float32" | "float16" | "bfloat16") -> torch objects.

    auto: CUDA when available, else CPU; float16 on CUDA (as the official evaluation), float32 on CPU.
    """
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    table = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype == "auto":
        return dev, torch.float16 if dev.type == "cuda" else torch.float32
    if dtype not in table:
        raise ValueError(f"dtype must be auto, {', '.join(table)}; got {dtype!r}")
    return dev, table[dtype]


def prediction_settings(options: PredictorOptions, dtype: torch.dtype) -> dict:
    """The settings recorded in the cache's meta.json: what changes the output besides the models."""
    return {
        "processing_res": options.processing_res,
        "latent": options.latent,
        "resize_back": options.resize_back,
        "seed": options.seed,
        "dtype": str(dtype).replace("torch.", ""),
    }


def configure_threads() -> None:
    """Use every core for intra-op work unless the user set a thread count."""
    if "OMP_NUM_THREADS" not in os.environ and "LOTUS3D_THREADS" not in os.environ:
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    elif "LOTUS3D_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["LOTUS3D_THREADS"]))
