"""Semantic segmentation: label maps from COCO instances or PNG mask folders; mIoU, mean Dice, pixel
accuracy and per-class IoU at the ORIGINAL image resolution; predictions as PNG label maps."""
from __future__ import annotations

from cvengine.errors import RecipeError
from cvengine.tasks.base import Task
from cvengine.tasks.semantic import results


class SemanticSegmentationTask(Task):
    name = "semantic_segmentation"
    main_metric = "val/miou"
    mode = "max"
    onnx_outputs = ("logits",)
    results = results

    def load_index(self, recipe, split: str):
        from cvengine.data.masks import read_class_names
        from cvengine.tasks.semantic.dataset import CocoSemanticIndex, MaskFolderIndex

        section = self.split_section(recipe, split, "images and annotations (or masks)")
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
        return MaskFolderIndex(images, recipe.resolve_path(section.masks), read_class_names(labels), recipe.data.ignore_index, recipe.data.reduce_labels)

    def build_dataset(self, recipe, index, adapter, train: bool):
        from cvengine.tasks.semantic.dataset import SemanticDataset

        augment = self.augment(recipe, with_masks=True) if train else None
        return SemanticDataset(index, augment=augment, resize=adapter.resize, seed=recipe.train.seed)

    def evaluator(self, index, predictions_path=None):
        from cvengine.tasks.semantic.evaluate import SemanticEvaluator

        return SemanticEvaluator(index, predictions_path)

    def filter_prediction(self, prediction: dict, threshold: float) -> dict:
        return prediction  # a label map has no scores to threshold

    def render(self, image, prediction: dict, class_names: list[str]):
        from cvengine.tasks.semantic.render import render

        return render(image, prediction, class_names)

    def write_report(self, index, predictions_path: str, out_dir: str, title: str = "") -> str:
        from cvengine.tasks.semantic.report import write_semantic_report

        return write_semantic_report(index, predictions_path, out_dir, title=title)
