"""Image classification: COCO or ImageFolder data; accuracy (top-1, top-5), macro F1 / precision /
recall and per-class F1 with torchmetrics; the confusion matrix as a picture in the MLflow run."""
from __future__ import annotations

from cvengine.errors import RecipeError
from cvengine.tasks.base import Task
from cvengine.tasks.classification import results


class ClassificationTask(Task):
    name = "classification"
    main_metric = "val/accuracy"
    mode = "max"
    onnx_outputs = ("logits",)
    results = results

    def load_index(self, recipe, split: str):
        from cvengine.data.images import image_folder_classes
        from cvengine.tasks.classification.dataset import ClassificationIndex

        section = self.split_section(recipe, split, "images (and annotations, unless images/<class>/ folders)")
        images = recipe.resolve_path(section.images)
        if section.annotations:
            return ClassificationIndex.from_coco(recipe.resolve_path(section.annotations), images, multi_label=recipe.model.multi_label)
        if recipe.model.multi_label:
            raise RecipeError(f"model.multi_label = true needs data.{split}.annotations: the ImageFolder layout gives one class per image")
        # ImageFolder: the train split's folders fix the classes and their order for every split.
        train = recipe.data.train
        class_names = None
        if split != "train" and train is not None and not train.annotations:
            class_names = image_folder_classes(recipe.resolve_path(train.images), "data.train.images")
        return ClassificationIndex.from_folders(images, class_names, where=f"data.{split}.images")

    def build_dataset(self, recipe, index, adapter, train: bool):
        from cvengine.tasks.classification.dataset import ClassificationDataset

        augment = self.augment(recipe) if train else None
        return ClassificationDataset(index, augment=augment, resize=adapter.resize, seed=recipe.train.seed)

    def evaluator(self, index, predictions_path=None):
        from cvengine.tasks.classification.evaluate import ClassificationEvaluator

        return ClassificationEvaluator(index, predictions_path)

    def filter_prediction(self, prediction: dict, threshold: float) -> dict:
        return prediction  # every class keeps its probability; the top-5 are reported

    def render(self, image, prediction: dict, class_names: list[str]):
        from cvengine.tasks.classification.render import render

        return render(image, prediction, class_names)

    def write_report(self, index, predictions_path: str, out_dir: str, title: str = "") -> str:
        from cvengine.tasks.classification.report import write_classification_report

        return write_classification_report(index, predictions_path, out_dir, title=title)
