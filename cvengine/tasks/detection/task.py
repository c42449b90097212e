"""Object detection: COCO boxes in, COCO bbox metrics (pycocotools) out."""
from __future__ import annotations

from cvengine.errors import RecipeError
from cvengine.tasks.base import Task
from cvengine.tasks.detection import results


class DetectionTask(Task):
    name = "detection"
    # The metric that selects the best checkpoint, and whether bigger is better.
    main_metric = "val/map"
    mode = "max"
    onnx_outputs = ("logits", "pred_boxes")
    results = results

    def split_files(self, recipe, split: str) -> tuple[str, str]:
        annotations, images = super().split_files(recipe, split)
        if annotations is None:
            from cvengine.data.convert import hf_split_as_coco, is_hf_dataset_folder

            if is_hf_dataset_folder(images):
                # A Hugging Face datasets folder (image + objects{bbox, category}) instead of COCO files.
                return hf_split_as_coco(images, split)
            raise RecipeError(f"data.{split}.annotations is required for {self.name} (or data.{split}.images naming a Hugging Face datasets folder)")
        return annotations, images

    def load_index(self, recipe, split: str):
        from cvengine.data.coco import CocoIndex

        return CocoIndex.load(*self.split_files(recipe, split))

    def build_dataset(self, recipe, index, adapter, train: bool):
        from cvengine.tasks.detection.dataset import CocoDetectionDataset

        augment = self.augment(recipe, with_boxes=True) if train else None
        return CocoDetectionDataset(index, augment=augment, resize=adapter.resize, seed=recipe.train.seed)

    def evaluator(self, index, predictions_path=None):
        from cvengine.tasks.detection.evaluate import DetectionEvaluator

        return DetectionEvaluator(index, predictions_path)

    def render(self, image, prediction: dict, class_names: list[str]):
        from cvengine.tasks.detection.render import render

        return render(image, prediction, class_names)

    def write_report(self, index, predictions_path: str, out_dir: str, title: str = "") -> str:
        from cvengine.tasks.detection.report import write_detection_report

        return write_detection_report(index, predictions_path, out_dir, title=title)
