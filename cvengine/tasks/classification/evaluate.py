"""Classification evaluation with torchmetrics over a whole split: accuracy (top-1, top-5), macro
F1 / precision / recall, per-class F1; multi-label: exact match, macro AP and macro F1 / precision /
recall. The confusion matrix goes to the active MLflow run as a picture."""
from __future__ import annotations

import numpy as np
import torch

from cvengine.tasks.classification import results
from cvengine.tasks.classification.results import MULTI_LABEL_THRESHOLD, TOP_K


class ClassificationEvaluator:
    """Per rank: `update`, then `state()`; on the main rank `merge` and `compute` / `write`. The state
    is each image's (K,) class probabilities, keyed by image id (padding repeats collapse)."""

    def __init__(self, index, predictions_path=None):
        self.index = index
        self.predictions_path = predictions_path
        self.scores: dict[int, np.ndarray] = {}

    def update(self, predictions: list[dict]) -> None:
        for p in predictions:
            self.scores[int(p["image_id"])] = np.asarray(p["scores"], np.float32)

    def state(self) -> dict:
        return self.scores

    def merge(self, states: list[dict]) -> None:
        for state in states:
            self.scores.update(state)

    @property
    def num_images(self) -> int:
        return len(self.scores)

    def arrays(self) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """scores (N, K) float32; targets (N,) int64, or (N, K) int64 multi-hot; image ids."""
        image_ids = sorted(self.scores)
        k = self.index.num_classes
        scores = torch.from_numpy(np.stack([self.scores[i] for i in image_ids])) if image_ids else torch.zeros((0, k))
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

        from cvengine.metrics.segmentation import metric_name

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
        metrics.update({f"val/f1/{metric_name(name)}": float(v) for name, v in zip(names, per_class.tolist())})
        return metrics

    def _log_confusion_matrix(self, matrix: np.ndarray) -> None:
        """A PNG of the (K, K) confusion matrix (rows: truth, columns: prediction) into the MLflow run
        when one is active in this process (training's main process); otherwise nothing."""
        import sys

        from cvengine.tasks.classification.report import confusion_matrix_figure

        mlflow = sys.modules.get("mlflow")
        if mlflow is None or mlflow.active_run() is None:
            return
        mlflow.log_figure(confusion_matrix_figure(matrix, self.index.class_names), "confusion_matrix.png")

    def write(self) -> None:
        label_map = self.index.label_map
        rows = []
        for image_id in sorted(self.scores):
            prediction = {"scores": self.scores[image_id], "multi_label": self.index.multi_label}
            rows.extend(results.records(prediction, image_id, self.index.file_names[self.index.position(image_id)], label_map))
        results.write(self.predictions_path, rows)
