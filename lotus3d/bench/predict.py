"""Benchmark of the prediction stage: ours vs a straightforward reference of the official pipeline.

``lotus3d bench predict`` builds two random-initialised SD2-sized Lotus G checkpoints (depth and
normal; same VAE and text encoder weights, as the real ones) once into a cache folder, then runs
each contender in its own process on the same image, twice, and reports the second call's wall
time (the first is reported too: it pays one-off costs, OpenVINO compiling its networks, torch
and the reference setting up), peak resident memory and the largest difference between the outputs.
Contenders: the reference, ours on torch, and ours on OpenVINO when it is installed (two processes:
the first converts the networks unless the OpenVINO cache already holds them, and reports that
separately; the second is timed from a warm cache).

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
from ..io import user_cache_dir
from ..predict import (
    TIMESTEP,
    LotusPredictor,
    PredictorOptions,
    lotus_normals_to_opencv,
    preprocess,
    resize_back,
    task_class_labels,
)
from ..predict_openvino import resident_bytes


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


class AnonPeak:
    """The peak of this process's anonymous resident memory (``RssAnon``, sampled every 20 ms).

    ``ru_maxrss`` also counts clean file pages a process has mapped (OpenVINO reads saved weights
    through a memory mapping): those the kernel can drop at any time; anonymous memory it cannot.
    Linux only (0 elsewhere)."""

    def __init__(self, interval_s: float = 0.02):
        import threading

        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(interval_s,), daemon=True)
        self._thread.start()

    @staticmethod
    def now() -> int:
        return resident_bytes("RssAnon")

    def _sample(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            self.peak = max(self.peak, self.now())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, self.now())


def _worker(which: str, depth: Path, normal: Path, res: int, out: Path) -> None:
    image = bench_image()
    anon = AnonPeak()
    t0 = time.perf_counter()
    # every contender runs the image twice in its process: the first call pays one-off costs (OpenVINO
    # converts or compiles; the reference's first call took 27 s longer than its second), the second is timed
    if which == "reference":
        d_pipe, n_pipe = ReferenceLotus(depth), ReferenceLotus(normal)

        def run_once() -> tuple[np.ndarray, np.ndarray]:
            return d_pipe(image, res).mean(-1), lotus_normals_to_opencv(n_pipe(image, res))
    else:
        backend = "torch" if which == "ours" else "openvino"
        opts = PredictorOptions(processing_res=res)
        pred = LotusPredictor.from_pretrained(depth, normal, device="cpu", options=opts, backend=backend)

        def run_once() -> tuple[np.ndarray, np.ndarray]:
            p = pred.predict(image)
            return p.depth, p.normal

    t_first = time.perf_counter()
    run_once()
    t1 = time.perf_counter()
    d, n = run_once()
    t2 = time.perf_counter()
    np.save(out / f"{which}_depth.npy", d)
    np.save(out / f"{which}_normal.npy", n)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = {
        "load_s": t_first - t0,
        "first_call_s": t1 - t_first,
        "predict_s": t2 - t1,
        "peak_bytes": peak,
        "peak_anon_bytes": anon.stop(),
    }
    if which == "openvino":
        parts = [pred.depth.unet.net, pred.depth.vae.encoder, pred.depth.vae.decoder, pred.normal.unet.net]
        result["conversions"] = sum(q.conversions for q in parts)
        result["released_bytes"] = sum(q.released_bytes for q in parts)
    print(json.dumps(result))


def bench_models_dir() -> Path:
    """Where the benchmark checkpoints are built: ``$LOTUS3D_BENCH_MODELS``, else ``bench-models`` in
    lotus3d's cache folder (:func:`lotus3d.io.user_cache_dir`: ``$LOTUS3D_CACHE`` or ~/.cache/lotus3d)."""
    return Path(os.environ.get("LOTUS3D_BENCH_MODELS") or user_cache_dir() / "bench-models")


def run(size: str = "sd2", processing_res: int = 768, models: Path | None = None, out: Path | None = None) -> dict:
    """Run both contenders in fresh processes; print and return the figures."""
    models = models or bench_models_dir()
    out = out or Path("bench_out/predict")
    out.mkdir(parents=True, exist_ok=True)
    depth, normal = ensure_models(models, size)
    results = {}
    contenders = ["reference", "ours"]
    if _has_openvino():
        contenders += ["openvino_cold", "openvino"]
    for which in contenders:
        cmd = [
            sys.executable,
            "-m",
            "lotus3d.bench.predict",
            "--worker",
            which.replace("_cold", ""),
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
        conversions = f" ({r['conversions']} conversions)" if "conversions" in r else ""
        print(
            f"{which:13s}: predict {r['predict_s']:7.2f} s (second call)   first call {r['first_call_s']:6.1f} s"
            f"{conversions}   load {r['load_s']:5.2f} s   peak memory {r['peak_bytes'] / 2**30:5.2f} GiB "
            f"(anonymous {r['peak_anon_bytes'] / 2**30:5.2f} GiB)",
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
        "time_ratio_first_call": ours["first_call_s"] / ref["first_call_s"],
        "time_ratio_incl_load": (ours["predict_s"] + ours["load_s"]) / (ref["predict_s"] + ref["load_s"]),
        "memory_ratio": ours["peak_bytes"] / ref["peak_bytes"],
        "anon_memory_ratio": ours["peak_anon_bytes"] / ref["peak_anon_bytes"],
        "max_abs_diff_depth": diff_d,
        "max_abs_diff_normal_01": diff_n,
    }
    print(
        f"ratio ours/reference: time {summary['time_ratio']:.3f} (first calls "
        f"{summary['time_ratio_first_call']:.3f}; with loading "
        f"{summary['time_ratio_incl_load']:.3f}), peak memory {summary['memory_ratio']:.3f} "
        f"(anonymous {summary['anon_memory_ratio']:.3f}); "
        f"max |diff| depth {diff_d:.2e}, normal (0..1 scale) {diff_n:.2e}"
    )
    if "openvino" in results:
        ov_run = results["openvino"]
        summary["openvino"] = ov_run
        summary["openvino_cold"] = results["openvino_cold"]
        summary["openvino_time_ratio"] = ov_run["predict_s"] / ref["predict_s"]
        summary["openvino_time_ratio_first_call"] = ov_run["first_call_s"] / ref["first_call_s"]
        summary["openvino_vs_torch"] = ov_run["predict_s"] / ours["predict_s"]
        summary["openvino_memory_ratio"] = ov_run["peak_bytes"] / ref["peak_bytes"]
        summary["openvino_anon_memory_ratio"] = ov_run["peak_anon_bytes"] / ref["peak_anon_bytes"]
        summary["openvino_max_abs_diff_depth"] = float(
            np.abs(np.load(out / "openvino_depth.npy") - np.load(out / "reference_depth.npy")).max()
        )
        summary["openvino_max_abs_diff_normal_01"] = float(
            np.abs(np.load(out / "openvino_normal.npy") - np.load(out / "reference_normal.npy")).max() / 2
        )
        sm = summary
        cold = sm["openvino_cold"]
        if cold["conversions"]:
            cold_note = f"first call with a cold cache ({cold['conversions']} conversions) {cold['first_call_s']:.0f} s"
        else:
            cold_note = "the conversion cache was already warm (delete it to time the conversion)"
        print(
            f"ratio openvino/reference: time {sm['openvino_time_ratio']:.3f} (first calls, OpenVINO compiling the "
            f"cached networks: {sm['openvino_time_ratio_first_call']:.3f}), vs torch backend "
            f"{sm['openvino_vs_torch']:.3f}, peak memory {sm['openvino_memory_ratio']:.3f} (anonymous "
            f"{sm['openvino_anon_memory_ratio']:.3f}); max |diff| "
            f"depth {sm['openvino_max_abs_diff_depth']:.2e}, normal {sm['openvino_max_abs_diff_normal_01']:.2e}; "
            f"{cold_note}"
        )
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _has_openvino() -> bool:
    from ..predict_openvino import available

    return available()


def option_effects(size: str = "sd2", models: Path | None = None) -> list[dict]:
    """Each deviation from the official computation vs the default, on the same image and models:
    time per image and mean / max |difference| of the [0, 1] outputs (depth; normals as colours)."""
    from dataclasses import replace

    models = models or bench_models_dir()
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


def openvino_levers(size: str = "sd2", processing_res: int = 768, models: Path | None = None) -> list[dict]:
    """Each OpenVINO setting against the default (f32, LATENCY hint, every core), network by network
    on the bench image's shapes (from the warm conversion cache): time per call and max |difference|
    of the output. Also one batched decode of the depth and normal latents against two calls."""
    from ..predict import encode, load_lotus
    from ..predict_openvino import cache_root, compile_config

    models = models or bench_models_dir()
    depth, _ = ensure_models(models, size)
    x = preprocess(torch.from_numpy(bench_image()).permute(2, 0, 1)[None].float(), processing_res)
    threads = torch.get_num_threads()
    variants = {
        "default (f32, LATENCY)": compile_config(threads),
        "THROUGHPUT hint": compile_config(threads, "THROUGHPUT"),
        "1 thread": compile_config(1),
        "bf16 (opt-in)": {**compile_config(threads), "INFERENCE_PRECISION_HINT": "bf16"},
    }
    rows, ref = [], {}
    for name, cfg in variants.items():
        m = load_lotus(depth, backend="openvino", openvino_config=cfg)
        gen = torch.Generator().manual_seed(42)
        z = encode(m.vae, x, gen)
        inp = torch.cat([z, torch.randn(z.shape, generator=gen)], 1)
        t = torch.full((1,), TIMESTEP, dtype=torch.long)
        args = (inp, t, m.prompt_embeds, task_class_labels(1, "cpu", torch.float32))
        calls = {
            "encoder": lambda m=m: m.vae.encoder(x),
            "unet": lambda m=m, a=args: m.unet.net(*a),
            "decoder": lambda m=m, z=z: m.vae.decoder(z / m.scaling_factor),
        }
        if name.startswith("default"):
            zz = torch.cat([z, z]) / m.scaling_factor
            calls["decoder, batch of 2"] = lambda m=m, zz=zz: m.vae.decoder(zz)
        for part, call in calls.items():
            call()  # compile (and warm up)
            t0 = time.perf_counter()
            y = call()
            dt = time.perf_counter() - t0
            if part == "decoder, batch of 2":
                dt /= 2
                y = y[:1]
            ref.setdefault(part.split(",")[0], y)
            diff = float((y - ref[part.split(",")[0]]).abs().max())
            rows.append({"variant": name, "part": part, "seconds": dt, "max_abs_diff": diff})
            print(f"{name:24s} {part:20s} {dt:7.2f} s per image   max |diff| {diff:.2e}", flush=True)
        del m
    print(f"(OpenVINO conversion cache: {cache_root()})")
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--worker", choices=("reference", "ours", "openvino"))
    ap.add_argument("--depth", type=Path)
    ap.add_argument("--normal", type=Path)
    ap.add_argument("--res", type=int, default=768)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--size", default="sd2", choices=("tiny", "sd2"))
    ap.add_argument("--options", action="store_true", help="measure each deviation from the official path")
    ap.add_argument("--openvino-levers", action="store_true", help="measure each OpenVINO setting, network by network")
    args = ap.parse_args(argv)
    if args.options:
        option_effects(args.size)
    elif args.openvino_levers:
        openvino_levers(args.size, args.res)
    elif args.worker:
        _worker(args.worker, args.depth, args.normal, args.res, args.out)
    else:
        run(args.size, args.res, out=args.out)


if __name__ == "__main__":
    main()
