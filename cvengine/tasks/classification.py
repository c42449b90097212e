"""Image classification: COCO or ImageFolder data; accuracy (top-1, top-5), macro F1 / precision /
recall and per-class F1 with torchmetrics; the confusion matrix as a picture in the MLflow run."""
from __future__ import annotations

import json
import os

import numpy as np
import torch

from cvengine.data.classification import ClassificationDataset, ClassificationIndex
from cvengine.data.transforms import build_augment
from cvengine.errors import RecipeError

# Multi-label: a class is predicted when its sigmoid probability reaches this.
MULTI_LABEL_THRESHOLD = 0.5
TOP_K = 5


class ClassificationTask:
    name = "classification"
    main_metric = "val/accuracy"
    mode = "max"
    default_augment = [
        {"name": "HorizontalFlip", "p": 0.5},
        {"name": "RandomBrightnessContrast", "p": 0.2},
    ]

    def load_index(self, recipe, split: str) -> ClassificationIndex:
        section = getattr(recipe.data, split)
        if section is None:
            raise RecipeError(f"[data.{split}] is missing: give images (and annotations, unless images/<class>/ folders) for the {split} split")
        images = recipe.resolve_path(section.images)
        if section.annotations:
            return ClassificationIndex.from_coco(recipe.resolve_path(section.annotations), images, multi_label=recipe.model.multi_label)
        if recipe.model.multi_label:
            raise RecipeError(f"model.multi_label = true needs data.{split}.annotations: the ImageFolder layout gives one class per image")
        # ImageFolder: the train split's folders fix the classes and their order for every split.
        train = recipe.data.train
        class_names = None
        if split != "train" and train is not None and not train.annotations:
            from cvengine.data.classification import image_folder_classes

            class_names = image_folder_classes(recipe.resolve_path(train.images), "data.train.images")
        return ClassificationIndex.from_folders(images, class_names, where=f"data.{split}.images")

    def build_dataset(self, recipe, index: ClassificationIndex, adapter, train: bool):
        augment = None
        if train:
            transforms = recipe.augment.transforms or self.default_augment
            augment = build_augment(transforms, recipe.augment.enabled, with_boxes=False)
        return ClassificationDataset(index, augment=augment, resize=adapter.resize, seed=recipe.train.seed)

    def evaluator(self, index: ClassificationIndex) -> "ClassificationEvaluator":
        return ClassificationEvaluator(index)

    # -- inference hooks (predict, serving, export); see DetectionTask ----------------------------------
    onnx_outputs = ("logits",)

    def prediction_records(self, prediction: dict, image_id: int, file_name: str, label_to_category_id, class_names=(), out_dir=None) -> list[dict]:
        from cvengine.serving import classification

        return classification.records(prediction, image_id, file_name, label_to_category_id, list(class_names))

    def filter_prediction(self, prediction: dict, threshold: float) -> dict:
        return prediction  # every class keeps its probability; the top-5 are reported

    def render(self, image, prediction: dict, class_names: list[str]):
        from cvengine.serving import classification

        return classification.render(image, prediction, class_names)

    def serving_output(self, prediction: dict, class_names: list[str], label_to_category_id) -> dict:
        from cvengine.serving import classification

        return classification.serving_output(prediction, class_names, label_to_category_id)

    def write_report(self, index, predictions_path: str, out_dir: str, title: str = "") -> str:
        from cvengine.reports.classification import write_classification_report

        return write_classification_report(index, predictions_path, out_dir, title=title)


class ClassificationEvaluator:
    """Per-image class probabilities of the whole split against the index's labels."""

    def __init__(self, index: ClassificationIndex):
        self.index = index
        self.predictions: dict[int, dict] = {}

    def update(self, predictions: list[dict]) -> None:
        # Keyed by image id: duplicates from padding the last batch across ranks collapse.
        for p in predictions:
            self.predictions[int(p["image_id"])] = p

    def arrays(self) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """scores (N, K) float32; targets (N,) int64, or (N, K) int64 multi-hot; image ids."""
        image_ids = sorted(self.predictions)
        k = self.index.num_classes
        scores = torch.from_numpy(np.stack([np.asarray(self.predictions[i]["scores"], np.float32) for i in image_ids])) if image_ids else torch.zeros((0, k))
        positions = [self.index.position(i) for i in image_ids]
        if self.index.multi_label:
            targets = torch.zeros((len(image_ids), k), dtype=torch.int64)
            for row, pos in enumerate(positions):
                targets[row, torch.from_numpy(self.index.labels_of(pos))] = 1
        else:
            targets = torch.tensor([int(self.index.labels_of(pos)[0]) for pos in positions], dtype=torch.int64)
        return scores, targets, image_ids

    def compute(self) -> dict[str, float]:
        from torchmetrics import functional as F

        scores, targets, _ = self.arrays()
        k = self.index.num_classes
        names = self.index.class_names
        if len(scores) == 0:
            return {"val/accuracy": 0.0}
        if self.index.multi_label:
            # zero_division=1: a class neither annotated nor predicted anywhere in the split is right,
            # as the multiclass macro average (which skips such classes) treats it.
            args = dict(num_labels=k, threshold=MULTI_LABEL_THRESHOLD, zero_division=1.0)
            metrics = {
                # Exact match: every label of the image right.
                "val/accuracy": F.classification.multilabel_exact_match(scores, targets, num_labels=k, threshold=MULTI_LABEL_THRESHOLD),
                "val/map": F.classification.multilabel_average_precision(scores, targets, num_labels=k, average="macro"),
                "val/f1": F.classification.multilabel_f1_score(scores, targets, average="macro", **args),
                "val/precision": F.classification.multilabel_precision(scores, targets, average="macro", **args),
                "val/recall": F.classification.multilabel_recall(scores, targets, average="macro", **args),
            }
            per_class = F.classification.multilabel_f1_score(scores, targets, average=None, **args)
        else:
            args = dict(num_classes=k)
            metrics = {
                "val/accuracy": F.classification.multiclass_accuracy(scores, targets, average="micro", top_k=1, **args),
                "val/f1": F.classification.multiclass_f1_score(scores, targets, average="macro", **args),
                "val/precision": F.classification.multiclass_precision(scores, targets, average="macro", **args),
                "val/recall": F.classification.multiclass_recall(scores, targets, average="macro", **args),
            }
            if k >= TOP_K:
                metrics["val/accuracy_top5"] = F.classification.multiclass_accuracy(scores, targets, average="micro", top_k=TOP_K, **args)
            per_class = F.classification.multiclass_f1_score(scores, targets, average=None, **args)
            self._log_confusion_matrix(F.classification.multiclass_confusion_matrix(scores, targets, **args).numpy())
        metrics = {key: float(value) for key, value in metrics.items()}
        from cvengine.metrics.segmentation import metric_name

        metrics.update({f"val/f1/{metric_name(name)}": float(v) for name, v in zip(names, per_class.tolist())})
        return metrics

    def _log_confusion_matrix(self, matrix: np.ndarray) -> None:
        """A PNG of the (K, K) confusion matrix (rows: truth, columns: prediction) into the MLflow run
        when one is active in this process (training's main process); otherwise nothing."""
        import sys

        mlflow = sys.modules.get("mlflow")
        if mlflow is None or mlflow.active_run() is None:
            return
        mlflow.log_figure(confusion_matrix_figure(matrix, self.index.class_names), "confusion_matrix.png")

    def write_predictions(self, path: str) -> None:
        """JSON list, per image: image_id, file_name, label (class name), category_id, score and the
        top-5 [{label, category_id, score}]; multi-label adds `labels`, every class at or above the
        threshold."""
        scores, _, image_ids = self.arrays()
        names, cat_ids = self.index.class_names, self.index.label_to_category_id
        records = []
        for row, image_id in enumerate(image_ids):
            s = scores[row]
            top = torch.argsort(s, descending=True)[:TOP_K].tolist()
            record = {
                "image_id": image_id,
                "file_name": self.index.file_names[self.index.position(image_id)],
                "label": names[top[0]],
                "category_id": int(cat_ids[top[0]]),
                "score": round(float(s[top[0]]), 5),
                "top5": [{"label": names[j], "category_id": int(cat_ids[j]), "score": round(float(s[j]), 5)} for j in top],
            }
            if self.index.multi_label:
                record["labels"] = [names[j] for j in torch.flatnonzero(s >= MULTI_LABEL_THRESHOLD).tolist()]
            records.append(record)
        tmp = f"{path}.tmp"
        with open(tmp, "w") as fh:
            json.dump(records, fh, indent=1)
        os.replace(tmp, path)


def confusion_matrix_figure(matrix: np.ndarray, class_names: list[str]):
    """A matplotlib Figure of a confusion matrix with counts in the cells (up to 30 classes)."""
    # A bare Figure (no pyplot): no GUI backend, no global figure state.
    from matplotlib.figure import Figure

    k = len(class_names)
    side = min(2 + 0.45 * k, 20)
    fig = Figure(figsize=(side, side))
    ax = fig.subplots()
    ax.imshow(matrix, cmap="Blues")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_xticks(range(k), labels=class_names, rotation=90)
    ax.set_yticks(range(k), labels=class_names)
    if k <= 30:
        peak = matrix.max() or 1
        for r in range(k):
            for c in range(k):
                ax.text(c, r, str(int(matrix[r, c])), ha="center", va="center", fontsize=7, color="white" if matrix[r, c] > peak / 2 else "black")
    fig.tight_layout()
    return fig
