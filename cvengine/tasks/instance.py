"""Instance segmentation: COCO instances with polygon or RLE masks in, COCO segm and bbox metrics
(pycocotools) out. Crowd regions are left out of the training targets and kept for the evaluator."""
from __future__ import annotations

import json
import os

import numpy as np

from cvengine.data.coco import CocoIndex, read_json
from cvengine.data.mask_datasets import InstanceMaskDataset
from cvengine.data.transforms import build_augment
from cvengine.errors import RecipeError


class InstanceSegmentationTask:
    name = "instance_segmentation"
    main_metric = "val/map"  # COCO segm mAP@[.5:.95]
    mode = "max"
    default_augment = [
        {"name": "HorizontalFlip", "p": 0.5},
        {"name": "RandomBrightnessContrast", "p": 0.2},
    ]

    def load_index(self, recipe, split: str) -> CocoIndex:
        section = getattr(recipe.data, split)
        if section is None:
            raise RecipeError(f"[data.{split}] is missing: give images and annotations for the {split} split")
        if not section.annotations:
            raise RecipeError(f"data.{split}.annotations is required for {self.name} (a COCO instances json with segmentations)")
        return CocoIndex.load(recipe.resolve_path(section.annotations), recipe.resolve_path(section.images), keep_segmentation=True)

    def build_dataset(self, recipe, index: CocoIndex, adapter, train: bool):
        augment = None
        if train:
            transforms = recipe.augment.transforms or self.default_augment
            # Masks carry the geometry; boxes are recomputed from them after augmentation.
            augment = build_augment(transforms, recipe.augment.enabled, with_boxes=False, with_masks=True)
        return InstanceMaskDataset(index, augment=augment, resize=adapter.resize, seed=recipe.train.seed)

    def evaluator(self, index: CocoIndex) -> "InstanceSegmentationEvaluator":
        return InstanceSegmentationEvaluator(index)

    # -- inference hooks (predict, serving, report); no ONNX export for mask-classification models ----
    def prediction_records(self, prediction: dict, image_id: int, file_name: str, label_to_category_id, class_names=(), out_dir=None) -> list[dict]:
        from cvengine.serving import instance

        return instance.records(prediction, image_id, file_name, label_to_category_id)

    def filter_prediction(self, prediction: dict, threshold: float) -> dict:
        from cvengine.serving import instance

        return instance.keep_above(prediction, threshold)

    def render(self, image, prediction: dict, class_names: list[str]):
        from cvengine.serving import instance

        return instance.render(image, prediction, class_names)

    def serving_output(self, prediction: dict, class_names: list[str], label_to_category_id) -> dict:
        from cvengine.serving import instance

        return instance.serving_output(prediction, class_names, label_to_category_id)

    def write_report(self, index: CocoIndex, predictions_path: str, out_dir: str, title: str = "") -> str:
        from cvengine.reports.instance import write_instance_report

        return write_instance_report(index, predictions_path, out_dir, title=title)


class InstanceSegmentationEvaluator:
    """Scores the predictions of a whole split against the ORIGINAL annotations file: segm metrics
    as `val/map`, `val/map_50`, … and box metrics (boxes of the predicted masks) as `val/bbox_map`, …"""

    def __init__(self, index: CocoIndex):
        self.index = index
        self.predictions: dict[int, dict] = {}

    def update(self, predictions: list[dict]) -> None:
        for p in predictions:
            self.predictions[int(p["image_id"])] = p

    def segm_results(self) -> list[dict]:
        """COCO results: image_id, original category_id, RLE segmentation (counts str), score."""
        cat_ids = self.index.label_to_category_id
        return [
            {"image_id": int(p["image_id"]), "category_id": int(cat_ids[label]), "segmentation": rle, "score": round(float(score), 5)}
            for p in self.predictions.values()
            for rle, score, label in zip(p["rles"], p["scores"], p["labels"])
        ]

    def bbox_array(self) -> np.ndarray:
        from cvengine.metrics.coco import detections_to_array

        preds = list(self.predictions.values())
        if not preds:
            return np.zeros((0, 7))
        return detections_to_array(
            [p["image_id"] for p in preds],
            [p["boxes_xyxy_abs"] for p in preds],
            [p["scores"] for p in preds],
            [self.index.label_to_category_id[p["labels"]] for p in preds],
        )

    def compute(self) -> dict[str, float]:
        from cvengine.metrics.coco import coco_from_dict, evaluate_coco

        gt = coco_from_dict(read_json(self.index.annotations_path), source=self.index.annotations_path)
        segm = evaluate_coco(gt, self.segm_results(), iou_type="segm")
        bbox = evaluate_coco(gt, self.bbox_array(), iou_type="bbox")
        metrics = {f"val/{k}": float(v) for k, v in segm.items()}
        metrics.update({f"val/bbox_{k}": float(v) for k, v in bbox.items()})
        return metrics

    def write_predictions(self, path: str) -> None:
        """COCO results with RLE masks (`python -m cvengine.metrics --iou-type segm` reads them), each
        with the `bbox` of its mask too."""
        records = []
        for r, box in zip(self.segm_results(), (b for p in self.predictions.values() for b in p["boxes_xyxy_abs"])):
            x0, y0, x1, y1 = (float(v) for v in box)
            records.append({**r, "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)]})
        tmp = f"{path}.tmp"
        with open(tmp, "w") as fh:
            json.dump(records, fh)
        os.replace(tmp, path)
