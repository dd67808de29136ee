"""The ``lotus3d`` command: one entry point, one subcommand per job.

Each subcommand parses its options into a typed config (``lotus3d.configs``) and calls a pipeline
(``lotus3d.pipelines``); errors a user can act on are printed without a stack trace.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from .errors import Lotus3DError

Command = Callable[[argparse.Namespace], int]
_COMMANDS: dict[str, tuple[Command, Callable[[argparse.ArgumentParser], None], str, str]] = {}


def command(name: str, help: str, description: str):
    """Register ``fn`` as subcommand ``name``; ``fn.add_arguments`` declares its options."""

    def wrap(fn: Command) -> Command:
        _COMMANDS[name] = (fn, getattr(fn, "_add", lambda p: None), help, description)
        return fn

    return wrap


def arguments(add: Callable[[argparse.ArgumentParser], None]):
    def wrap(fn: Command) -> Command:
        fn._add = add  # type: ignore[attr-defined]
        return fn

    return wrap


# ------------------------------------------------------------------------------------ predict
def _predict_args(p: argparse.ArgumentParser) -> None:
    from lotus3d.configs import PredictConfig, add_arguments

    p.add_argument("scene", type=Path, help="scene folder (images in SCENE/images or SCENE itself)")
    p.add_argument("-o", "--out", type=Path, default=None, help="cache folder (default: SCENE/predictions)")
    p.add_argument("--force", action="store_true", help="redo every view, even those already in the cache")
    p.add_argument("--config", type=Path, default=None, help="YAML file with a 'predict:' section")
    add_arguments(p, PredictConfig)


@command(
    "predict",
    help="Lotus depth + normals for every image of a scene, into the prediction cache",
    description=(
        "Run Lotus on every image in SCENE/images (or SCENE) and write SCENE/predictions/: meta.json, "
        "depth/<stem>.npy (float32 [H, W], affine-invariant disparity or depth, recorded in meta.json) and "
        "normal/<stem>.npy (float32 [H, W, 3], unit, OpenCV camera frame, facing the camera). Re-runs skip "
        "views already predicted with the same models and settings. Weights come from the Hugging Face cache "
        "(downloaded when online) or a local folder given with --model / --normal-model."
    ),
)
@arguments(_predict_args)
def _predict(args: argparse.Namespace) -> int:
    from lotus3d.configs import PredictConfig, from_args, load_yaml
    from lotus3d.pipelines.predict import predict_scene

    base = load_yaml(PredictConfig, args.config, "predict") if args.config else None
    cfg = from_args(PredictConfig, args, base)
    report = predict_scene(args.scene, cfg, out=args.out, force=args.force)
    out = args.out or args.scene / "predictions"
    print(
        f"predicted {len(report.predicted)} view(s), {len(report.cached)} already cached, "
        f"{len(report.failed)} failed -> {out}"
    )
    for stem, why in report.failed.items():
        print(f"  failed: {stem}: {why}")
    if report.seconds_per_view:
        print(f"  {report.seconds_per_view:.2f} s per view")
    return 1 if report.failed and not (report.predicted or report.cached) else 0


# -------------------------------------------------------------------------------------- bench
def _bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("stage", choices=["predict"], help="which stage to benchmark")
    p.add_argument(
        "--size",
        choices=["sd2", "tiny"],
        default="sd2",
        help="model size for 'predict' (sd2: the real checkpoints' sizes; default: sd2)",
    )
    p.add_argument("--processing-res", type=int, default=768, help="processing resolution (default: 768)")
    p.add_argument("-o", "--out", type=Path, default=None, help="folder for outputs and summary.json")


@command(
    "bench",
    help="benchmarks: ours vs a baseline, measured side by side (not tests)",
    description="Benchmarks print ours vs a baseline measured in the same run, as ratios. "
    "'predict': depth + normal for one 640x480 image with random-initialised SD2-sized Lotus models "
    "(built once into ~/.cache/lotus3d/bench-models, ~10 GB) vs a plain reference of the official pipeline.",
)
@arguments(_bench_args)
def _bench(args: argparse.Namespace) -> int:
    if args.stage == "predict":
        from lotus3d.bench.predict import run

        run(args.size, args.processing_res, out=args.out)
    return 0


# ---------------------------------------------------------------------------------- entry point
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lotus3d",
        description="3D reconstruction with Lotus depth and normals: photos in, coloured mesh out.",
        epilog="Run 'lotus3d COMMAND --help' for a command's options.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (fn, add, help_text, description) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=description)
        add(p)
        p.set_defaults(_fn=fn)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2) + (0 if args.verbose else 10),
        format="%(levelname)s %(name)s: %(message)s",
    )
    _quiet_libraries()
    if not getattr(args, "_fn", None):
        parser.print_help()
        return 0
    try:
        return int(args._fn(args) or 0)
    except Lotus3DError as e:
        print(f"lotus3d {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished views are kept and a re-run resumes", file=sys.stderr)
        return 130


def _quiet_libraries() -> None:
    """Hide transformers / diffusers loading bars and info chatter (our own tqdm bars remain)."""
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2, default=str))


if __name__ == "__main__":
    sys.exit(main())
