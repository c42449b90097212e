"""Semantic segmentation: label maps from COCO instances or PNG mask folders; mIoU, mean Dice, pixel
accuracy and per-class IoU at the ORIGINAL image resolution; predictions as PNG label maps."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from cvengine.data.semantic import CocoSemanticIndex, MaskFolderIndex, SemanticDataset, SemanticIndex, read_class_names
from cvengine.data.transforms import build_augment
from cvengine.errors import RecipeError
from cvengine.metrics.segmentation import confusion_matrix, segmentation_scores


class SemanticSegmentationTask:
    name = "semantic_segmentation"
    main_metric = "val/miou"
    mode = "max"
    default_augment = [
        {"name": "HorizontalFlip", "p": 0.5},
        {"name": "RandomBrightnessContrast", "p": 0.2},
    ]

    def load_index(self, recipe, split: str) -> SemanticIndex:
        section = getattr(recipe.data, split)
        if section is None:
            raise RecipeError(f"[data.{split}] is missing: give images and annotations (or masks) for the {split} split")
        images = recipe.resolve_path(section.images)
        if section.annotations and section.masks:
            raise RecipeError(f"[data.{split}] gives both annotations and masks; give one: a COCO file, or a folder of PNG label maps")
        if section.annotations:
            return CocoSemanticIndex.load(recipe.resolve_path(section.annotations), images)
        if not section.masks:
            raise RecipeError(f"[data.{split}] needs annotations (COCO instances json) or masks (a folder of PNG label maps) for {self.name}")
        if recipe.data.labels is None:
            raise RecipeError(f"data.labels is required with data.{split}.masks: the class names by label id, a list or a file")
        labels = recipe.resolve_path(recipe.data.labels) if isinstance(recipe.data.labels, str) else recipe.data.labels
        class_names = read_class_names(labels)
        return MaskFolderIndex(images, recipe.resolve_path(section.masks), class_names, recipe.data.ignore_index, recipe.data.reduce_labels)

    def build_dataset(self, recipe, index: SemanticIndex, adapter, train: bool):
        augment = None
        if train:
            transforms = recipe.augment.transforms or self.default_augment
            augment = build_augment(transforms, recipe.augment.enabled, with_boxes=False, with_masks=True)
        return SemanticDataset(index, augment=augment, resize=adapter.resize, seed=recipe.train.seed)

    def evaluator(self, index: SemanticIndex) -> "SemanticEvaluator":
        return SemanticEvaluator(index)

    # -- inference hooks (predict, serving, export); see DetectionTask ----------------------------------
    onnx_outputs = ("logits",)

    def prediction_records(self, prediction: dict, image_id: int, file_name: str, label_to_category_id, class_names=(), out_dir=None) -> list[dict]:
        from cvengine.serving import semantic

        return semantic.records(prediction, image_id, file_name, out_dir)

    def predictions_document(self, records: list[dict], class_names: list[str], label_to_category_id) -> dict:
        from cvengine.serving import semantic

        return semantic.document(records, class_names, label_to_category_id)

    def filter_prediction(self, prediction: dict, threshold: float) -> dict:
        return prediction  # a label map has no scores to threshold

    def render(self, image, prediction: dict, class_names: list[str]):
        from cvengine.serving import semantic

        return semantic.render(image, prediction, class_names)

    def serving_output(self, prediction: dict, class_names: list[str], label_to_category_id) -> dict:
        from cvengine.serving import semantic

        return semantic.serving_output(prediction, class_names, label_to_category_id)

    def write_report(self, index, predictions_path: str, out_dir: str, title: str = "") -> str:
        from cvengine.reports.semantic import write_semantic_report

        return write_semantic_report(index, predictions_path, out_dir, title=title)


class SemanticEvaluator:
    """Scores predicted label maps against the index's ground truth at the original resolution.

    `predictions` keeps, per image id, the image's confusion matrix (non-zero cells) and the predicted
    map PNG-encoded (a few KB), so a whole split fits in memory and duplicates collapse."""

    def __init__(self, index: SemanticIndex):
        self.index = index
        self.predictions: dict[int, dict] = {}

    def update(self, predictions: list[dict]) -> None:
        import cv2

        k = self.index.num_classes
        for p in predictions:
            image_id = int(p["image_id"])
            i = self.index.position(image_id)
            target = self.index.semantic_map(i)
            predicted = np.asarray(p["semantic_map"])
            if predicted.shape != target.shape:
                raise ValueError(f"prediction for image id {image_id} is {predicted.shape}, the annotation {target.shape}: predictions must be at the original image size")
            ok, png = cv2.imencode(".png", predicted.astype(np.uint8 if k <= 256 else np.uint16))
            # Sparse: a (K, K) matrix per image would not fit in memory for 150 classes × 2,000 images.
            flat = confusion_matrix(target, predicted, k).ravel()
            cells = np.flatnonzero(flat)
            self.predictions[image_id] = {"cells": cells, "counts": flat[cells], "png": png.tobytes()}

    def confusion(self) -> np.ndarray:
        k = self.index.num_classes
        total = np.zeros(k * k, dtype=np.int64)
        for p in self.predictions.values():
            total[p["cells"]] += p["counts"]
        return total.reshape(k, k)

    def compute(self) -> dict[str, float]:
        return segmentation_scores(self.confusion(), self.index.class_names)

    def write_predictions(self, path: str) -> None:
        """PNG label maps (contiguous labels, one per image, named after the image) in a folder
        beside `path` (`predictions.json` -> `predictions/`), and `path`: a JSON index
        {"classes": [...], "images": [{image_id, file_name, mask}]} with mask paths relative to it."""
        path = Path(path)
        folder = path.with_suffix("")
        folder.mkdir(parents=True, exist_ok=True)
        records = []
        for image_id in sorted(self.predictions):
            i = self.index.position(image_id)
            file_name = self.index.file_names[i]
            mask_name = os.path.splitext(file_name)[0] + ".png"
            target = folder / mask_name
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".tmp")
            tmp.write_bytes(self.predictions[image_id]["png"])
            os.replace(tmp, target)
            records.append({"image_id": image_id, "file_name": file_name, "mask": str(Path(folder.name) / mask_name)})
        data = {"classes": list(self.index.class_names), "category_ids": self.index.label_to_category_id.tolist(), "images": records}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)
