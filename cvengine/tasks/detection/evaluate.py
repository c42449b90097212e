"""Detection evaluation: COCO bbox AP/AR (pycocotools) of a whole split against the ORIGINAL
annotations file (crowd regions included, so that pycocotools treats them as crowd)."""
from __future__ import annotations

from cvengine.tasks.detection import results


class DetectionEvaluator:
    """Per rank: `update` with that rank's predictions, then `state()`; on the main rank `merge` every
    rank's state and `compute` / `write`. The state is the predictions themselves (at most 100 boxes
    per image), keyed by image id so that the repeats that pad the last batch across ranks collapse."""

    results = results  # the task's writer of COCO results rows
    prediction_keys = ("image_id", "boxes_xyxy_abs", "scores", "labels")

    def __init__(self, index, predictions_path=None):
        self.index = index
        self.predictions_path = predictions_path
        self.predictions: dict[int, dict] = {}

    def update(self, predictions: list[dict]) -> None:
        for p in predictions:
            self.predictions[int(p["image_id"])] = {k: p[k] for k in self.prediction_keys}

    def state(self) -> dict:
        return self.predictions

    def merge(self, states: list[dict]) -> None:
        for state in states:
            self.predictions.update(state)

    @property
    def num_images(self) -> int:
        return len(self.predictions)

    def records(self) -> list[dict]:
        """COCO results of every image, in image id order (the predictions file's rows)."""
        position = {int(iid): i for i, iid in enumerate(self.index.image_ids)}
        label_map = self.index.label_map
        return [r for iid in sorted(self.predictions) for r in self.results.records(self.predictions[iid], iid, self.index.file_names[position[iid]], label_map)]

    def compute(self) -> dict[str, float]:
        from cvengine.metrics.coco import COCO_METRIC_KEYS, coco_evaluator, metric_name, per_class_ap

        # The rows written to the predictions file are the rows scored: metrics from the file equal these.
        evaluator = coco_evaluator(self.index.coco(), self.records(), iou_type="bbox")
        metrics = {f"val/{k}": float(v) for k, v in zip(COCO_METRIC_KEYS, evaluator.stats)}
        # Per class under a second "/" (val/ap/<name>): tracked and kept in metrics.json, left out of the
        # one-line epoch summary.
        metrics.update({f"val/ap/{metric_name(row['name'])}": row["ap"] for row in per_class_ap(evaluator).values()})
        return metrics

    def write(self) -> None:
        self.results.write(self.predictions_path, self.records())
