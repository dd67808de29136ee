"""Per-view Lotus inference spread over a Ray cluster (optional: ``pip install lotus3d[ray]``).

The driver reads each image's bytes and sends them to a pool of actors; each actor loads the
models once (one per GPU, or one per ``cpus_per_worker`` CPUs without GPUs) and returns the
prediction; the driver writes it to the same prediction cache as a local run, atomically, as it
arrives — so an interrupted distributed run resumes like a local one. An actor process that dies
is restarted by Ray and its in-flight views are retried; a view that raises (an unreadable image,
say) is reported by name and the others complete. Nothing here is imported without ``--ray``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path

from .configs import PredictConfig
from .errors import Lotus3DError
from .types import Prediction


class _Worker:
    """Ray actor body: a Lotus predictor loaded once, predicting a batch of images' bytes per call."""

    def __init__(self, factory: Callable[[PredictConfig], object], cfg: dict, threads: int):
        import torch

        torch.set_num_threads(max(1, threads))
        os.environ["LOTUS3D_THREADS"] = str(max(1, threads))
        self.predictor = factory(PredictConfig(**cfg))

    def predict(self, batch: list[tuple[str, str, bytes]]) -> list[tuple[str, Prediction | None, str | None]]:
        """Predict a batch of (stem, file name, file bytes); same-size images share forward passes."""
        from .io import decode_image

        images, results = {}, {}
        for stem, name, data in batch:
            try:
                images[stem] = decode_image(data, name)
            except Lotus3DError as e:
                results[stem] = (stem, None, str(e))
        try:
            preds = self.predictor.predict_batch(list(images.values())) if images else []
            results.update({stem: (stem, p, None) for stem, p in zip(images, preds, strict=True)})
        except Exception as e:  # a bug or a CUDA error must not sink the run: report this batch's views
            results.update({stem: (stem, None, f"{type(e).__name__}: {e}") for stem in images})
        return [results[stem] for stem, _, _ in batch]


def _init(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    if address in (None, "", "local"):
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    else:
        ray.init(address=address, log_to_driver=False, configure_logging=False)


def pool_size(cpus_per_worker: int) -> tuple[int, int, float]:
    """(actors, threads per actor, GPUs per actor) for the connected cluster."""
    import ray

    res = ray.cluster_resources()
    gpus = int(res.get("GPU", 0))
    cpus = int(res.get("CPU", 1))
    if gpus:
        return gpus, max(1, cpus // gpus), 1.0
    per = max(1, min(cpus_per_worker, cpus))
    return max(1, cpus // per), per, 0.0


def predict_distributed(
    items: Iterable[tuple[str, Path]],
    cfg: PredictConfig,
    factory: Callable[[PredictConfig], object],
    write: Callable[[str, Prediction], None],
    address: str | None = None,
    cpus_per_worker: int = 1,
    in_flight_per_worker: int = 2,
    batch_size: int = 1,
    progress: Callable[[], None] | None = None,
) -> dict[str, str]:
    """Predict every (stem, image path) on Ray; ``write(stem, prediction)`` each result as it comes.

    ``factory(cfg)`` builds a predictor in each actor (a module-level function, pickled by reference).
    Each call carries ``batch_size`` views; ``in_flight_per_worker`` calls are queued per actor.

    Returns:
        {stem: error message} for the views that failed.
    """
    import ray

    _init(address)
    n_actors, threads, gpus = pool_size(cpus_per_worker)
    remote = ray.remote(num_cpus=threads, num_gpus=gpus, max_restarts=-1, max_task_retries=3)(_Worker)
    actors = [remote.remote(factory, asdict(cfg), threads) for _ in range(n_actors)]
    queue = list(items)
    failed: dict[str, str] = {}
    pending: dict = {}
    turn = 0

    def submit() -> None:
        nonlocal turn
        batch, queue[:] = queue[:batch_size], queue[batch_size:]
        actor = actors[turn % len(actors)]
        turn += 1
        ref = actor.predict.remote([(stem, Path(path).name, Path(path).read_bytes()) for stem, path in batch])
        pending[ref] = [stem for stem, _ in batch]

    for _ in range(n_actors * in_flight_per_worker):
        if queue:
            submit()
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            ref = done[0]
            stems = pending.pop(ref)
            try:
                results = ray.get(ref)
            except ray.exceptions.RayError as e:  # the actor kept dying: give up on these views only
                results = [(stem, None, f"worker failed: {type(e).__name__}") for stem in stems]
            for stem, pred, err in results:
                if err is None and pred is not None:
                    write(stem, pred)
                else:
                    failed[stem] = err or "no result"
                if progress:
                    progress()
            if queue:
                submit()
    finally:
        for a in actors:
            ray.kill(a)
    return failed
