"""The reconstruction output folder: where each file lives and how its records are encoded.

One owner for the layout that ``lotus3d reconstruct`` writes and :class:`lotus3d.scene.Scene`,
the report and the benchmarks read::

    OUT/mesh.ply                           the mesh, vertex colours, scene units
    OUT/mesh.glb (+ mesh.obj, .mtl, .png)  the same mesh with a UV texture baked from the photos
    OUT/sparse/                            the COLMAP model used (text; pinhole cameras)
    OUT/depth/<stem>.npy                   aligned (and refined) depth, float32 (H, W), scene units, NaN = none
    OUT/report.json                        per-view alignment, per-stage timings, settings, versions
    OUT/report.html                        ``lotus3d report OUT``
    OUT/.state.json                        fingerprints of finished stages (resume)
    OUT/work/alignment.json                per-view :class:`~lotus3d.types.Alignment` records
    OUT/work/aligned/, work/refined_<k>/   per-stage depth maps
    OUT/work/colmap/                       pycolmap's database and models
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from .io import load_json, save_json
from .types import Alignment

DEFAULT_OUT = "lotus3d"  # SCENE/lotus3d unless the user names another folder


@dataclass(frozen=True)
class OutputLayout:
    """The paths of one reconstruction folder ``root`` and its records' encoding."""

    root: Path

    @classmethod
    def for_scene(cls, scene: Path, out: str | Path | None = None) -> OutputLayout:
        return cls(Path(out) if out else Path(scene) / DEFAULT_OUT)

    @property
    def report(self) -> Path:
        return self.root / "report.json"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"

    @property
    def state(self) -> Path:
        return self.root / ".state.json"

    @property
    def sparse(self) -> Path:
        return self.root / "sparse"

    @property
    def alignment_record(self) -> Path:
        return self.root / "work" / "alignment.json"

    @property
    def colmap_work(self) -> Path:
        return self.root / "work" / "colmap"

    def mesh(self, fmt: str) -> Path:
        """``OUT/mesh.<fmt>`` (ply, glb, obj)."""
        return self.root / f"mesh.{fmt}"

    def depth(self, stem: str) -> Path:
        """The final aligned depth of a view."""
        return self.root / "depth" / f"{stem}.npy"

    def stage_depth_dir(self, stage: str) -> Path:
        """Depth maps after a stage: ``aligned`` or ``refined_<k>``."""
        return self.root / "work" / stage

    # ------------------------------------------------------------------------------- records
    def read_report(self) -> dict:
        """report.json's content; {} before the first finished run."""
        return load_json(self.report) if self.report.is_file() else {}

    def write_report(self, report: dict) -> None:
        save_json(self.report, report)

    def read_alignments(self, report: dict | None = None) -> dict[str, Alignment]:
        """The per-view alignment records, with the held-out errors after refinement that ``report``
        (report.json's content) adds to them (:func:`merge_heldout`)."""
        alignments = {n: Alignment(**a) for n, a in load_json(self.alignment_record).items()}
        return merge_heldout(alignments, report or {})

    def write_alignments(self, alignments: dict[str, Alignment]) -> None:
        save_json(self.alignment_record, {n: asdict(a) for n, a in alignments.items()})


def merge_heldout(alignments: dict[str, Alignment], report: dict) -> dict[str, Alignment]:
    """``alignments`` with the held-out errors after refinement that ``report`` (report.json's
    content) records per view; updated in place and returned."""
    for name, view in report.get("views", {}).items():
        if name in alignments and view.get("heldout"):
            alignments[name].heldout = view["heldout"]
    return alignments


def alignment_json(a: Alignment) -> dict:
    """An alignment as report.json shows it (percentiles rounded)."""
    d = asdict(a)
    d["residual_percentiles"] = {k: round(v, 5) for k, v in a.residual_percentiles.items()}
    return d
