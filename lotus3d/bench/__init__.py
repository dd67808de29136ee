"""Benchmarks (not tests): `lotus3d bench STAGE` prints ours vs a baseline, measured side by side."""

from __future__ import annotations

import json
from pathlib import Path


def shared_data() -> Path | None:
    """The project's shared data folder (``shared/data`` beside or above the working directory or
    the checkout), or None."""
    for base in (Path.cwd(), *Path.cwd().parents, Path(__file__).resolve().parents[2]):
        for cand in (base / "shared" / "data", base.parent / "shared" / "data"):
            if cand.is_dir():
                return cand
    return None


def write_summary(out: Path, rows: list[dict]) -> None:
    """The benchmark's rows as ``out/summary.json``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(rows, indent=2, default=float))
