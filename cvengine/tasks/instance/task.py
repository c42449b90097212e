"""Instance segmentation: COCO instances with polygon or RLE masks in, COCO segm and bbox metrics
(pycocotools) out. Crowd regions are left out of the training targets and kept for the evaluator."""
from __future__ import annotations

from cvengine.errors import RecipeError
from cvengine.tasks.base import Task
from cvengine.tasks.instance import results


class InstanceSegmentationTask(Task):
    name = "instance_segmentation"
    main_metric = "val/map"  # COCO segm mAP@[.5:.95]
    mode = "max"
    results = results  # no ONNX export for mask-classification models

    def load_index(self, recipe, split: str):
        from cvengine.data.coco import CocoIndex

        section = self.split_section(recipe, split, "images and annotations")
        if not section.annotations:
            raise RecipeError(f"data.{split}.annotations is required for {self.name} (a COCO instances json with segmentations)")
        return CocoIndex.load(recipe.resolve_path(section.annotations), recipe.resolve_path(section.images), keep_segmentation=True)

    def build_dataset(self, recipe, index, adapter, train: bool):
        from cvengine.tasks.instance.dataset import InstanceMaskDataset

        # Masks carry the geometry; boxes are recomputed from them after augmentation.
        augment = self.augment(recipe, with_masks=True) if train else None
        return InstanceMaskDataset(index, augment=augment, resize=adapter.resize, seed=recipe.train.seed)

    def evaluator(self, index, predictions_path=None):
        from cvengine.tasks.instance.evaluate import InstanceSegmentationEvaluator

        return InstanceSegmentationEvaluator(index, predictions_path)

    def render(self, image, prediction: dict, class_names: list[str]):
        from cvengine.tasks.instance.render import render

        return render(image, prediction, class_names)

    def write_report(self, index, predictions_path: str, out_dir: str, title: str = "") -> str:
        from cvengine.tasks.instance.report import write_instance_report

        return write_instance_report(index, predictions_path, out_dir, title=title)
