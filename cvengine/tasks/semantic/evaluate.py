"""Semantic segmentation evaluation: one confusion matrix over the whole split, at the original
resolution (`cvengine.metrics.segmentation`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cvengine.metrics.segmentation import confusion_matrix, segmentation_scores
from cvengine.tasks.semantic import results


class SemanticEvaluator:
    """Per rank: `update` scores each predicted label map against its ground truth at once and keeps
    the image's confusion matrix (its non-zero cells) — and, when a predictions file is asked for,
    writes the map's PNG and keeps its record. `state()` is those, keyed by image id (padding
    repeats collapse); the main rank `merge`s every rank's and computes the split's scores."""

    def __init__(self, index, predictions_path=None):
        self.index = index
        self.predictions_path = predictions_path
        self.png_folder = Path(predictions_path).with_suffix("") if predictions_path else None
        self.cells: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.rows: dict[int, list[dict]] = {}

    def update(self, predictions: list[dict]) -> None:
        k = self.index.num_classes
        for p in predictions:
            image_id = int(p["image_id"])
            i = self.index.position(image_id)
            target = self.index.semantic_map(i)
            predicted = np.asarray(p["semantic_map"])
            if predicted.shape != target.shape:
                raise ValueError(f"prediction for image id {image_id} is {predicted.shape}, the annotation {target.shape}: predictions must be at the original image size")
            # Sparse: a (K, K) matrix per image would not fit in memory for 150 classes × 2,000 images.
            flat = confusion_matrix(target, predicted, k).ravel()
            nonzero = np.flatnonzero(flat)
            self.cells[image_id] = (nonzero, flat[nonzero])
            if self.png_folder is not None:
                self.rows[image_id] = results.records(p, image_id, self.index.file_names[i], self.index.label_map, self.png_folder)

    def state(self) -> dict:
        return {"cells": self.cells, "rows": self.rows}

    def merge(self, states: list[dict]) -> None:
        for state in states:
            self.cells.update(state["cells"])
            self.rows.update(state["rows"])

    @property
    def num_images(self) -> int:
        return len(self.cells)

    def confusion(self) -> np.ndarray:
        k = self.index.num_classes
        total = np.zeros(k * k, dtype=np.int64)
        for nonzero, counts in self.cells.values():
            total[nonzero] += counts
        return total.reshape(k, k)

    def compute(self) -> dict[str, float]:
        return segmentation_scores(self.confusion(), self.index.class_names)

    def write(self) -> None:
        """`predictions.json` (an index of the PNG label maps, which `update` wrote beside it in
        `predictions/`)."""
        rows = [r for image_id in sorted(self.rows) for r in self.rows[image_id]]
        results.write(self.predictions_path, rows, self.index.label_map)
