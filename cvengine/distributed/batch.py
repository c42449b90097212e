"""Batch prediction with Ray Data: the same Predictor as `cvengine.predict`, in a pool of actors.

    python -m cvengine.predict --model runs/x images/ --output preds --backend ray [--actors N]

Each actor loads the model once and answers batches of image paths with the rows of
predictions.json (as JSON text) for them; the driver puts the rows back in file order and writes the
file with the task's writer, so the output equals the single-process one. One actor per GPU when the
cluster has GPUs; otherwise one per CPU (`--actors` chooses). Rendered overlays and PNG predictions
are written by the actors into the output folder: on a multi-node cluster it must be a shared path
(a Unity Catalog volume, NFS).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from cvengine.errors import CvengineError

log = logging.getLogger("cvengine")


class PredictActor:
    """Ray Data callable class: {"path", "name", "image_id", "rendered"} columns in, {"image_id", "records"} out."""

    def __init__(self, model_dir: str, batch_size: int, threshold: float, draw_threshold: float, out_dir: str, threads: int | None = None):
        import torch

        from cvengine.serving.predictor import Predictor

        if threads:
            # A CPU actor gets the cores Ray gave it, not every core of the machine.
            torch.set_num_threads(threads)
        self.predictor = Predictor(model_dir, batch_size=batch_size)
        self.threshold, self.draw_threshold = threshold, draw_threshold
        self.out_dir = Path(out_dir)

    def __call__(self, batch: dict) -> dict:
        from cvengine.data.images import read_image
        from cvengine.predict import image_records

        paths = [str(p) for p in batch["path"]]
        images = [read_image(p) for p in paths]
        predictions = self.predictor.predict(images)
        rows = []
        for name, image_id, rendered, image, prediction in zip(batch["name"], batch["image_id"], batch["rendered"], images, predictions):
            rendered_path = self.out_dir / "rendered" / str(rendered) if rendered else None
            records = image_records(
                self.predictor.task, self.predictor, int(image_id), str(name), image, prediction, self.threshold,
                self.out_dir / "predictions", rendered_path, self.draw_threshold,
            )
            rows.append(json.dumps(records))
        return {"image_id": np.asarray(batch["image_id"], dtype=np.int64), "records": np.asarray(rows, dtype=object)}


def _cluster_resources(ray) -> tuple[int, int]:
    resources = ray.cluster_resources()
    return int(resources.get("GPU", 0)), int(resources.get("CPU", 1))


def predict_with_ray(model: str, files: list[Path], out_dir: Path, threshold: float = 0.0, batch_size: int = 8, render: bool = True,
                     draw_threshold: float = 0.3, actors: int | None = None) -> Path:
    """Predict `files` with a pool of Ray Data actors; write out_dir/predictions.json. Returns its path."""
    from cvengine.data.coco import LabelMap
    from cvengine.distributed.ray import require_ray
    from cvengine.predict import VIDEO_SUFFIXES, rendered_name
    from cvengine.serving.predictor import read_metadata, resolve_model_dir
    from cvengine.tasks import get_task

    ray = require_ray()
    import ray.data

    videos = [f for f in files if f.suffix.lower() in VIDEO_SUFFIXES]
    if videos:
        raise CvengineError(f"--backend ray predicts images only; {videos[0]} is a video (use the local backend for videos)")
    model_dir = resolve_model_dir(model)
    from cvengine.adapters import load_config

    metadata = read_metadata(model_dir, load_config(str(model_dir)))
    task, label_map = get_task(metadata["task"]), LabelMap.from_metadata(metadata)
    used: set = set()
    items = [
        {"path": str(path.resolve()), "name": str(path), "image_id": image_id, "rendered": rendered_name(str(path), used) if render else ""}
        for image_id, path in enumerate(files, start=1)
    ]
    started = not ray.is_initialized()
    if started:
        ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    try:
        gpus, cpus = _cluster_resources(ray)
        size = actors or (gpus if gpus else cpus)
        # One GPU per actor where GPUs exist; else the CPUs shared out among the actors.
        per_actor = {"num_gpus": 1} if gpus else {"num_cpus": max(1, cpus // size)}
        threads = None if gpus else max(1, cpus // size)
        log.info(f"Ray Data: {len(items)} images, {size} actor(s), {'1 GPU' if gpus else f'{threads} CPU'} each")
        # One line of ours instead of Ray Data's per-operator progress and execution plan lines.
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        dataset = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), size * 4)))
        results = dataset.map_batches(
            PredictActor, batch_size=batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=size),
            fn_constructor_kwargs={
                "model_dir": str(model_dir), "batch_size": batch_size, "threshold": threshold, "draw_threshold": draw_threshold,
                "out_dir": str(out_dir.resolve()), "threads": threads,
            },
            **per_actor,
        ).take_all()
    finally:
        if started:
            ray.shutdown()
    # Back in file order: the rows equal the single-process output's.
    records = [r for row in sorted(results, key=lambda row: int(row["image_id"])) for r in json.loads(row["records"])]
    path = out_dir / "predictions.json"
    task.write_predictions(path, records, label_map)
    return path
