"""Instance segmentation evaluation: COCO segm AP/AR (the main metrics, `val/map` …) and box AP/AR
of the predicted masks' boxes (`val/bbox_map` …), pycocotools against the ORIGINAL annotations."""
from __future__ import annotations

from cvengine.tasks.detection.evaluate import DetectionEvaluator
from cvengine.tasks.instance import results


class InstanceSegmentationEvaluator(DetectionEvaluator):
    """Per rank: `update`, then `state()`; on the main rank `merge` and `compute` / `write`. The state
    is the predictions (at most 100 RLE masks per image, a few KB), keyed by image id."""

    results = results
    prediction_keys = ("image_id", "rles", "boxes_xyxy_abs", "scores", "labels")

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
