"""Instance segmentation evaluation: COCO segm AP/AR (the main metrics, `val/map` …) and box AP/AR
of the predicted masks' boxes (`val/bbox_map` …), pycocotools against the ORIGINAL annotations."""
from __future__ import annotations

from cvengine.tasks.instance import results


class InstanceSegmentationEvaluator:
    """Per rank: `update`, then `state()`; on the main rank `merge` and `compute` / `write`. The state
    is the predictions (at most 100 RLE masks per image, a few KB), keyed by image id."""

    def __init__(self, index, predictions_path=None):
        self.index = index
        self.predictions_path = predictions_path
        self.predictions: dict[int, dict] = {}

    def update(self, predictions: list[dict]) -> None:
        for p in predictions:
            self.predictions[int(p["image_id"])] = {k: p[k] for k in ("image_id", "rles", "boxes_xyxy_abs", "scores", "labels")}

    def state(self) -> dict:
        return self.predictions

    def merge(self, states: list[dict]) -> None:
        for state in states:
            self.predictions.update(state)

    @property
    def num_images(self) -> int:
        return len(self.predictions)

    def records(self) -> list[dict]:
        position = {int(iid): i for i, iid in enumerate(self.index.image_ids)}
        label_map = self.index.label_map
        return [r for iid in sorted(self.predictions) for r in results.records(self.predictions[iid], iid, self.index.file_names[position[iid]], label_map)]

    def compute(self) -> dict[str, float]:
        from cvengine.metrics.coco import evaluate_coco

        rows = self.records()
        gt = self.index.coco()
        # segm scores the masks alone (their area sizes the buckets); bbox the masks' boxes.
        segm = evaluate_coco(gt, rows, iou_type="segm")
        bbox = evaluate_coco(gt, rows, iou_type="bbox")
        metrics = {f"val/{k}": float(v) for k, v in segm.items()}
        metrics.update({f"val/bbox_{k}": float(v) for k, v in bbox.items()})
        return metrics

    def write(self) -> None:
        results.write(self.predictions_path, self.records())
