"""Panoptic evaluation: PQ / SQ / RQ of a whole split (panopticapi's formula)."""
from __future__ import annotations

from pathlib import Path

from cvengine.metrics.panoptic import PQStat
from cvengine.tasks.panoptic import results


class PanopticEvaluator:
    """Per rank: `update` scores each image against its ground truth at once and keeps the image's PQ
    sums (a few numbers per category) — and, when a predictions file is asked for, writes its PNG and
    keeps its annotation record. `state()` is those, keyed by image id (padding repeats collapse); the
    main rank `merge`s every rank's and averages."""

    def __init__(self, index, predictions_path=None):
        self.index = index
        self.predictions_path = predictions_path
        self.png_folder = Path(predictions_path).with_suffix("") if predictions_path else None
        self.position = {int(i): k for k, i in enumerate(index.image_ids)}
        self.stats: dict[int, PQStat] = {}
        self.rows: dict[int, list[dict]] = {}

    def update(self, predictions: list[dict]) -> None:
        label_map = self.index.label_map
        for p in predictions:
            image_id = int(p["image_id"])
            if image_id in self.stats:
                continue  # padding of the last batch across ranks repeats images
            k = self.position[image_id]
            gt_segments = {sid: (label_map.category_id(label), crowd) for sid, label, crowd in self.index.segments[k]}
            pred_segments = {s["id"]: label_map.category_id(s["label"]) for s in p["segments"]}
            stat = PQStat()
            stat.update(self.index.segment_map(k), gt_segments, p["segment_map"], pred_segments)
            self.stats[image_id] = stat
            if self.png_folder is not None:
                self.rows[image_id] = results.records(p, image_id, self.index.file_names[k], label_map, self.png_folder)

    def state(self) -> dict:
        return {"stats": self.stats, "rows": self.rows}

    def merge(self, states: list[dict]) -> None:
        for state in states:
            for image_id, stat in state["stats"].items():
                self.stats.setdefault(image_id, stat)
            self.rows.update(state["rows"])

    @property
    def num_images(self) -> int:
        return len(self.stats)

    def compute(self) -> dict[str, float]:
        total = PQStat()
        for stat in self.stats.values():
            total.merge(stat)
        averages = total.average(self.index.label_map.categories)
        return {f"val/{k}": float(v) for k, v in averages.items() if not k.startswith("n")}

    def write(self) -> None:
        """COCO panoptic: the json (annotations + categories); `update` wrote the PNGs into the folder
        named after it (predictions.json -> predictions/)."""
        rows = [r for image_id in sorted(self.rows) for r in self.rows[image_id]]
        results.write(self.predictions_path, rows, self.index.label_map)
