"""Benchmark of the prediction stage: ours vs a straightforward reference of the official pipeline.

``lotus3d bench predict`` builds two random-initialised SD2-sized Lotus G checkpoints (depth and
normal; same VAE and text encoder weights, as the real ones) once into a cache folder, then runs
each contender in its own process on the same image and reports wall time, peak resident memory
and the largest difference between the outputs.

The reference follows the official code path: one full pipeline per task held in memory (UNet,
VAE, text encoder, tokenizer), the empty prompt encoded on every call, the image encoded once per
task, NCHW float32. It draws its random numbers in the same order as ours (encode sample, then
noise, from one generator seeded per call), so the outputs are comparable pixel by pixel.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..dummy_models import make_lotus_checkpoint
from ..predict import (
    TIMESTEP,
    LotusPredictor,
    PredictorOptions,
    lotus_normals_to_opencv,
    preprocess,
    resize_back,
    task_class_labels,
)


class ReferenceLotus:
    """The official single-checkpoint pipeline, written plainly (the benchmark's baseline)."""

    def __init__(self, path: Path, dtype: torch.dtype = torch.float32):
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        self.unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=dtype).eval()
        self.vae = AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=dtype).eval()
        self.text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", torch_dtype=dtype).eval()
        self.tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
        self.scheduler = DDIMScheduler.from_pretrained(path, subfolder="scheduler")

    @torch.no_grad()
    def __call__(self, image: np.ndarray, processing_res: int = 768, seed: int = 42) -> np.ndarray:
        """(H, W, 3) in [0, 1] -> (H, W, 3) decoded output in [0, 1] at the input size."""
        h, w = image.shape[:2]
        x = preprocess(torch.from_numpy(image).permute(2, 0, 1)[None].float(), processing_res)
        ids = self.tokenizer("", padding="do_not_pad", return_tensors="pt").input_ids
        prompt_embeds = self.text_encoder(ids)[0]
        gen = torch.Generator().manual_seed(seed)
        z = self.vae.encode(x).latent_dist.sample(generator=gen) * self.vae.config.scaling_factor
        if self.unet.config.in_channels == 8:
            noise = torch.randn(z.shape, generator=gen) * self.scheduler.init_noise_sigma
            z = torch.cat([z, noise], dim=1)
        t = torch.tensor([TIMESTEP])
        pred = self.unet(
            z,
            t,
            encoder_hidden_states=prompt_embeds,
            class_labels=task_class_labels(1, "cpu", z.dtype),
            return_dict=False,
        )[0]
        y = self.vae.decode(pred / self.vae.config.scaling_factor, return_dict=False)[0]
        y = (y / 2 + 0.5).clamp(0, 1)
        return resize_back(y, (h, w), "nearest")[0].permute(1, 2, 0).numpy()


def bench_image(width: int = 640, height: int = 480, seed: int = 0) -> np.ndarray:
    """A deterministic textured test image, (H, W, 3) float32 in [0, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    img = np.stack([np.sin(9 * xx + 3 * yy), np.cos(7 * yy - 2 * xx), np.sin(5 * (xx + yy))], -1) * 0.35 + 0.5
    return np.clip(img + rng.normal(0, 0.05, img.shape), 0, 1).astype(np.float32)


def ensure_models(root: Path, size: str) -> tuple[Path, Path]:
    """Build (once) a depth and a normal checkpoint of ``size`` under ``root``."""
    paths = []
    for task, seed in (("depth", 1), ("normal", 2)):
        p = root / f"{size}-{task}"
        if not (p / "model_index.json").is_file():
            print(f"building random-initialised {size} {task} checkpoint in {p} (once) ...", flush=True)
            make_lotus_checkpoint(
                p, "g", size=size, unet_seed=seed, depth_kind="disparity" if task == "depth" else None
            )
        paths.append(p)
    return paths[0], paths[1]


def _worker(which: str, depth: Path, normal: Path, res: int, out: Path) -> None:
    image = bench_image()
    t0 = time.perf_counter()
    if which == "reference":
        d_pipe, n_pipe = ReferenceLotus(depth), ReferenceLotus(normal)
        t1 = time.perf_counter()
        depth_y = d_pipe(image, res)
        normal_y = n_pipe(image, res)
        d, n = depth_y.mean(-1), lotus_normals_to_opencv(normal_y)
    else:
        pred = LotusPredictor.from_pretrained(depth, normal, device="cpu", options=PredictorOptions(processing_res=res))
        t1 = time.perf_counter()
        p = pred.predict(image)
        d, n = p.depth, p.normal
    t2 = time.perf_counter()
    np.save(out / f"{which}_depth.npy", d)
    np.save(out / f"{which}_normal.npy", n)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"load_s": t1 - t0, "predict_s": t2 - t1, "peak_bytes": peak}))


def run(size: str = "sd2", processing_res: int = 768, models: Path | None = None, out: Path | None = None) -> dict:
    """Run both contenders in fresh processes; print and return the figures."""
    models = models or Path(os.environ.get("LOTUS3D_BENCH_MODELS", Path.home() / ".cache/lotus3d/bench-models"))
    out = out or Path("bench_out/predict")
    out.mkdir(parents=True, exist_ok=True)
    depth, normal = ensure_models(models, size)
    results = {}
    for which in ("reference", "ours"):
        cmd = [
            sys.executable,
            "-m",
            "lotus3d.bench.predict",
            "--worker",
            which,
            "--depth",
            str(depth),
            "--normal",
            str(normal),
            "--res",
            str(processing_res),
            "--out",
            str(out),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{which} failed:\n{proc.stderr[-3000:]}")
        results[which] = json.loads(proc.stdout.strip().splitlines()[-1])
        r = results[which]
        print(
            f"{which:9s}: predict {r['predict_s']:7.2f} s   load {r['load_s']:5.2f} s   "
            f"peak memory {r['peak_bytes'] / 2**30:5.2f} GiB",
            flush=True,
        )
    diff_d = float(np.abs(np.load(out / "ours_depth.npy") - np.load(out / "reference_depth.npy")).max())
    # compare normals on the decoded [0, 1] scale: |dy| = |dn| / 2
    diff_n = float(np.abs(np.load(out / "ours_normal.npy") - np.load(out / "reference_normal.npy")).max() / 2)
    ref, ours = results["reference"], results["ours"]
    summary = {
        "size": size,
        "processing_res": processing_res,
        "threads": torch.get_num_threads(),
        "reference": ref,
        "ours": ours,
        "time_ratio": ours["predict_s"] / ref["predict_s"],
        "time_ratio_incl_load": (ours["predict_s"] + ours["load_s"]) / (ref["predict_s"] + ref["load_s"]),
        "memory_ratio": ours["peak_bytes"] / ref["peak_bytes"],
        "max_abs_diff_depth": diff_d,
        "max_abs_diff_normal_01": diff_n,
    }
    print(
        f"ratio ours/reference: time {summary['time_ratio']:.3f} (with loading "
        f"{summary['time_ratio_incl_load']:.3f}), peak memory {summary['memory_ratio']:.3f}; "
        f"max |diff| depth {diff_d:.2e}, normal (0..1 scale) {diff_n:.2e}"
    )
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def option_effects(size: str = "sd2", models: Path | None = None) -> list[dict]:
    """Each deviation from the official computation vs the default, on the same image and models:
    time per image and mean / max |difference| of the [0, 1] outputs (depth; normals as colours)."""
    from dataclasses import replace

    models = models or Path(os.environ.get("LOTUS3D_BENCH_MODELS", Path.home() / ".cache/lotus3d/bench-models"))
    depth, normal = ensure_models(models, size)
    image = bench_image()
    base = PredictorOptions()
    predictor = LotusPredictor.from_pretrained(depth, normal, device="cpu", options=base)
    variants = {
        "official (sample, nearest, 768)": base,
        "latent=mode": replace(base, latent="mode"),
        "resize_back=bilinear": replace(base, resize_back="bilinear"),
        "processing_res=512": replace(base, processing_res=512),
        "seed=43 (sampling noise)": replace(base, seed=43),
    }
    rows, ref = [], None
    for name, opts in variants.items():
        predictor.options = opts
        t0 = time.perf_counter()
        p = predictor.predict(image)
        dt = time.perf_counter() - t0
        out = (p.depth, (p.normal * -0.5 + 0.5))
        if ref is None:
            ref = out
        dd, dn = np.abs(out[0] - ref[0]), np.abs(out[1] - ref[1])
        row = {
            "variant": name,
            "seconds": dt,
            "depth_mean": float(dd.mean()),
            "depth_max": float(dd.max()),
            "normal_mean": float(dn.mean()),
            "normal_max": float(dn.max()),
        }
        rows.append(row)
        print(
            f"{name:32s} {dt:7.2f} s   depth |diff| mean {row['depth_mean']:.2e} max {row['depth_max']:.2e}   "
            f"normal |diff| mean {row['normal_mean']:.2e} max {row['normal_max']:.2e}",
            flush=True,
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--worker", choices=("reference", "ours"))
    ap.add_argument("--depth", type=Path)
    ap.add_argument("--normal", type=Path)
    ap.add_argument("--res", type=int, default=768)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--size", default="sd2", choices=("tiny", "sd2"))
    ap.add_argument("--options", action="store_true", help="measure each deviation from the official path")
    args = ap.parse_args(argv)
    if args.options:
        option_effects(args.size)
    elif args.worker:
        _worker(args.worker, args.depth, args.normal, args.res, args.out)
    else:
        run(args.size, args.res, out=args.out)


if __name__ == "__main__":
    main()
