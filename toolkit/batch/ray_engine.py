"""The Ray engine: Ray Data hands file paths to an actor pool, one loaded model per actor.

Each actor (`RayPredictor`) loads the model once and runs the local engine's own
`local_rows` (the runtime's `predict_files`: its decoder, its operating point) on its
batch's files, so a row is what local predict gives for that file. Ray Data's actor pool restarts a dead actor and retries its
task (`max_restarts`, `max_task_retries`: set here, not left to defaults); order is
preserved, and the table writer refuses duplicates and counts what is missing, so a
killed worker neither loses a file nor writes one twice. Multi-node: `ray start
--head` on one machine, `ray start --address HEAD:6379` on the others, then
`--address auto` (or `ray://HEAD:10001`); model and image paths must be readable on
every node (a shared file system).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from toolkit.batch.local import local_rows
from toolkit.batch.options import BatchOptions
from toolkit.batch.output import Row
from toolkit.errors import ClusterError, MissingDependencyError

BLOCK_BATCHES = 4  # batches per Ray Data block once there are enough blocks to keep every actor busy
MAX_BLOCKS = 10_000


class RayPredictor:
    """One actor's model; called with a batch of paths, returns their rows as numpy columns."""

    def __init__(self, model: str, load_options: dict):
        from toolkit.quiet import silenced
        from toolkit.runtime import load

        with silenced((2,)):
            self.classifier = load(model, **load_options)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The batch's rows as local predict makes them (`local_rows`), laid out as numpy columns."""
        paths = [str(p) for p in batch["path"]]
        rows = list(local_rows(self.classifier, paths, batch_size=len(paths)))
        labels = self.classifier.labels
        return {
            "path": np.array([r.path for r in rows], dtype=object),
            "label": np.array([r.label or "" for r in rows], dtype=object),
            "score": np.array([np.nan if r.score is None else r.score for r in rows]),
            "probabilities": np.array(
                [
                    [np.nan] * len(labels) if r.probabilities is None else [r.probabilities[k] for k in labels]
                    for r in rows
                ]
            ),
            "error": np.array([r.error or "" for r in rows], dtype=object),
        }


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise MissingDependencyError("--engine ray needs the [ray] extra: pip install 'toolkit[ray]'") from None
    return ray


def _connect(ray, options: BatchOptions) -> bool:
    """Join the cluster at `options.address`, or start a local one; True when this call started Ray."""
    if ray.is_initialized():
        return False
    if options.address is None and options.workers > (os.cpu_count() or 1):
        raise ClusterError(
            f"--workers {options.workers} exceeds this machine's {os.cpu_count()} cores (each actor takes one); "
            "join a larger cluster with --address"
        )
    try:
        ray.init(address=options.address, include_dashboard=False, configure_logging=False, log_to_driver=True)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise ClusterError(
            f"cannot reach the Ray cluster at {options.address}: {' '.join(str(exc).split())[:160]}"
        ) from None
    return True


def ray_rows(
    model: Path,
    paths: list[str],
    labels: list[str],
    options: BatchOptions,
    batch_size: int,
    load_options: dict,
    predictor: type = RayPredictor,
) -> Iterator[Row]:
    """Rows for `paths`, in order, classified by `options.workers` actors of `predictor` (`labels`: the model's)."""
    ray = _import_ray()
    started = _connect(ray, options)
    try:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        batches = -(-len(paths) // batch_size)
        blocks = max(1, min(batches, max(options.workers * 4, batches // BLOCK_BATCHES), MAX_BLOCKS))
        dataset = ray.data.from_items([{"path": p} for p in paths], override_num_blocks=blocks).map_batches(
            predictor,
            fn_constructor_kwargs={"model": str(Path(model).resolve()), "load_options": load_options},
            batch_size=batch_size,
            batch_format="numpy",
            concurrency=options.workers,
            num_cpus=1,
            num_gpus=1 if load_options.get("device") == "cuda" else 0,
            max_restarts=-1,
            max_task_retries=-1,
        )
        yield from _rows(dataset.iter_batches(batch_size=batch_size, batch_format="numpy"), labels)
    except ray.exceptions.RayError as exc:
        raise ClusterError(f"the Ray job failed: {' '.join(str(exc).split())[:200]}") from None
    finally:
        if started:
            ray.shutdown()


def _rows(batches, labels: list[str]) -> Iterator[Row]:
    for batch in batches:
        for i, path in enumerate(batch["path"]):
            error = str(batch["error"][i])
            if error:
                yield Row(str(path), None, None, None, error)
                continue
            probabilities = {label: float(p) for label, p in zip(labels, batch["probabilities"][i])}
            yield Row(str(path), str(batch["label"][i]), float(batch["score"][i]), probabilities)
