"""Panoptic segmentation: COCO panoptic (json + PNG folder) in, PQ / SQ / RQ (panopticapi's formula,
`cvengine/metrics/panoptic.py`) out; predictions written as COCO panoptic PNGs + json."""
from __future__ import annotations

import os

from cvengine.errors import RecipeError
from cvengine.tasks.base import Task
from cvengine.tasks.panoptic import results


class PanopticSegmentationTask(Task):
    name = "panoptic_segmentation"
    main_metric = "val/pq"
    mode = "max"
    results = results  # no ONNX export for mask-classification models

    def load_index(self, recipe, split: str):
        from cvengine.tasks.panoptic.dataset import PanopticIndex

        masks = self.masks_path(recipe, split)  # checks the split's section and annotations first
        section = getattr(recipe.data, split)
        return PanopticIndex.load(recipe.resolve_path(section.annotations), recipe.resolve_path(section.images), masks)

    def masks_path(self, recipe, split: str) -> str:
        section = self.split_section(recipe, split, "images, annotations (panoptic json) and masks (PNG folder)")
        if not section.annotations:
            raise RecipeError(f"data.{split}.annotations is required for {self.name} (a COCO panoptic json)")
        if section.masks:
            masks = recipe.resolve_path(section.masks)
        else:
            # COCO's layout: panoptic_val2017.json beside the folder panoptic_val2017/.
            masks = os.path.splitext(recipe.resolve_path(section.annotations))[0]
            if not os.path.isdir(masks):
                raise RecipeError(f"data.{split}.masks is not set and {masks}/ does not exist: give the folder of panoptic PNGs as data.{split}.masks")
        if not os.path.isdir(masks):
            raise RecipeError(f"data.{split}.masks: panoptic PNG folder not found: {masks}")
        return masks

    def build_dataset(self, recipe, index, adapter, train: bool):
        from cvengine.tasks.panoptic.dataset import PanopticDataset

        self.prepare_predictor(adapter, index.label_map)
        augment = self.augment(recipe, with_masks=True) if train else None
        return PanopticDataset(index, augment=augment, resize=adapter.resize, seed=recipe.train.seed)

    def evaluator(self, index, predictions_path=None):
        from cvengine.tasks.panoptic.evaluate import PanopticEvaluator

        return PanopticEvaluator(index, predictions_path)

    def prepare_predictor(self, adapter, label_map) -> None:
        """Stuff classes (`isthing` 0) get one segment per class per image in post-processing."""
        if hasattr(adapter, "set_stuff_labels"):
            adapter.set_stuff_labels(label for label, thing in enumerate(label_map.isthing) if not thing)

    def render(self, image, prediction: dict, class_names: list[str]):
        from cvengine.tasks.panoptic.render import render

        return render(image, prediction, class_names)

    def write_report(self, index, predictions_path: str, out_dir: str, title: str = "") -> str:
        from cvengine.tasks.panoptic.report import write_panoptic_report

        return write_panoptic_report(index, predictions_path, out_dir, title=title)
