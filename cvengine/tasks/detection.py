"""Object detection: COCO boxes in, COCO bbox metrics (pycocotools) out."""
from __future__ import annotations

import json
import os

import numpy as np

from cvengine.data.coco import CocoIndex, read_json
from cvengine.data.dataset import CocoDetectionDataset
from cvengine.data.transforms import build_augment
from cvengine.errors import RecipeError


class DetectionTask:
    name = "detection"
    # The metric that selects the best checkpoint, and whether bigger is better.
    main_metric = "val/map"
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
            raise RecipeError(f"data.{split}.annotations is required for {self.name}")
        return CocoIndex.load(recipe.resolve_path(section.annotations), recipe.resolve_path(section.images))

    def build_dataset(self, recipe, index: CocoIndex, adapter, train: bool):
        augment = None
        if train:
            transforms = recipe.augment.transforms or self.default_augment
            augment = build_augment(transforms, recipe.augment.enabled, with_boxes=True)
        return CocoDetectionDataset(index, augment=augment, resize=adapter.resize, seed=recipe.train.seed)

    def evaluator(self, index: CocoIndex) -> "DetectionEvaluator":
        return DetectionEvaluator(index)

    # -- inference hooks (predict, serving, export, report) -------------------------------------------
    # The raw model outputs an exported graph must return, in this order, for the adapter's postprocess.
    onnx_outputs = ("logits", "pred_boxes")

    def prediction_records(self, prediction: dict, image_id: int, file_name: str, label_to_category_id, class_names=(), out_dir=None) -> list[dict]:
        from cvengine.serving import detection

        return detection.records(prediction, image_id, file_name, label_to_category_id)

    def filter_prediction(self, prediction: dict, threshold: float) -> dict:
        from cvengine.serving import detection

        return detection.keep_above(prediction, threshold)

    def render(self, image, prediction: dict, class_names: list[str]):
        from cvengine.serving import detection

        return detection.render(image, prediction, class_names)

    def serving_output(self, prediction: dict, class_names: list[str], label_to_category_id) -> dict:
        from cvengine.serving import detection

        return detection.serving_output(prediction, class_names, label_to_category_id)

    def write_report(self, index: CocoIndex, predictions_path: str, out_dir: str, title: str = "") -> str:
        from cvengine.reports.detection import write_detection_report

        return write_detection_report(index, predictions_path, out_dir, title=title)


class DetectionEvaluator:
    """Collects predictions of the whole split and scores them against the ORIGINAL annotations file
    (crowd regions included, so pycocotools treats them as crowd)."""

    def __init__(self, index: CocoIndex):
        self.index = index
        self.predictions: dict[int, dict] = {}

    def update(self, predictions: list[dict]) -> None:
        # Keyed by image id: duplicates from padding the last batch across ranks collapse.
        for p in predictions:
            self.predictions[int(p["image_id"])] = p

    def results_array(self) -> np.ndarray:
        """(N, 7) [image_id, x, y, w, h, score, category_id] with ORIGINAL COCO category ids."""
        from cvengine.metrics.coco import detections_to_array

        preds = list(self.predictions.values())
        if not preds:
            return np.zeros((0, 7))
        counts = [len(p["scores"]) for p in preds]
        image_ids = np.repeat([p["image_id"] for p in preds], counts)
        boxes = np.concatenate([p["boxes_xyxy_abs"] for p in preds]).reshape(-1, 4)
        scores = np.concatenate([p["scores"] for p in preds])
        labels = np.concatenate([p["labels"] for p in preds]).astype(np.int64)
        return detections_to_array(image_ids, boxes, scores, self.index.label_to_category_id[labels])

    def compute(self) -> dict[str, float]:
        from cvengine.metrics.coco import coco_from_dict, evaluate_coco

        gt = coco_from_dict(read_json(self.index.annotations_path))
        stats = evaluate_coco(gt, self.results_array(), iou_type="bbox")
        return {f"val/{k}": float(v) for k, v in stats.items()}

    def write_predictions(self, path: str) -> None:
        """COCO results format: original category ids, bbox [x, y, w, h] absolute, score."""
        rows = self.results_array()
        records = [
            {"image_id": int(r[0]), "category_id": int(r[6]), "bbox": [round(float(v), 2) for v in r[1:5]], "score": round(float(r[5]), 5)}
            for r in rows
        ]
        tmp = f"{path}.tmp"
        with open(tmp, "w") as fh:
            json.dump(records, fh)
        os.replace(tmp, path)
