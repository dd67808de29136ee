"""Shared fixtures: tiny random-initialised Lotus checkpoints saved to disk, and the shared data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the network
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATA = SHARED / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The project's shared data (real meshes, photos, DiLiGenT normals) beside the checkout. Tests
    that need it skip, with the reason, on a clone without it; under CI (``CI`` set) they fail, so
    that CI never passes without running them."""
    if not DATA.is_dir():
        message = f"needs the shared data folder {DATA} (../shared/data beside the repository), absent here"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return DATA


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Tiny Lotus checkpoints: G depth (disparity), G normal, D depth, and a G normal with its own VAE."""
    from lotus3d.dummy_models import make_lotus_checkpoint

    root = tmp_path_factory.mktemp("lotus-tiny")
    return {
        "depth_g": make_lotus_checkpoint(root / "depth-g", "g", unet_seed=1, depth_kind="disparity"),
        "normal_g": make_lotus_checkpoint(root / "normal-g", "g", unet_seed=2),
        "depth_d": make_lotus_checkpoint(root / "depth-d", "d", unet_seed=3, depth_kind="depth"),
        "normal_g_other_vae": make_lotus_checkpoint(root / "normal-g-vae2", "g", unet_seed=2, shared_seed=99),
    }
