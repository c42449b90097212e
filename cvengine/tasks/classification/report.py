"""The classification report: accuracy, the confusion matrix as a picture and its largest
off-diagonal cells as a table, per-class precision / recall / F1 (torchmetrics), and a gallery of
misclassified images with the true and predicted class written on them."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from cvengine.html_report import jpeg_of_image, png_of_figure, table, write_page

TOP_CONFUSIONS = 10
GALLERY_SIZE = 12


def write_classification_report(index, predictions_path: str | os.PathLike, out_dir: str | os.PathLike, title: str = "") -> str:
    """Write `out_dir/report.html` for the evaluator's predictions.json (one record per image with the
    top-1 `category_id` and `score`) against `index`'s labels."""
    import torch
    from torchmetrics import functional as F

    from cvengine.data.images import read_image
    from cvengine.tasks.classification.render import render

    records = json.loads(Path(predictions_path).read_text())
    title = title or f"Classification report — {Path(index.annotations_path or index.images_dir).name}"
    sections = [f'<p class="note">Ground truth: {index.annotations_path or index.images_dir} ({len(index)} images); predictions: {predictions_path} ({len(records)} images).</p>']
    if index.multi_label:
        sections.append("<p>Multi-label data: the confusion matrix and the per-image gallery apply to one class per image and are left out; see the evaluation metrics.</p>")
        return write_page(out_dir, title, sections)
    k, names = index.num_classes, index.class_names
    positions = [index.position(int(r["image_id"])) for r in records]
    truth = torch.tensor([int(index.labels_of(p)[0]) for p in positions], dtype=torch.int64)
    predicted = torch.tensor([index.label_map.label_of(r["category_id"]) for r in records], dtype=torch.int64)
    matrix = F.classification.multiclass_confusion_matrix(predicted, truth, num_classes=k).numpy() if len(records) else np.zeros((k, k), np.int64)
    accuracy = float((truth == predicted).float().mean()) if len(records) else 0.0
    sections.append("<h2>Summary</h2>" + table(["metric", "value"], [["accuracy", accuracy], ["images", len(records)], ["misclassified", int((truth != predicted).sum())]]))
    sections.append(f'<h2>Confusion matrix</h2><p class="note">Rows: true class, columns: predicted class.</p><img src="{png_of_figure(confusion_matrix_figure(matrix, names))}" alt="confusion matrix">')
    off_diagonal = matrix * (1 - np.eye(k, dtype=matrix.dtype))
    cells = [c for c in np.argsort(-off_diagonal, axis=None, kind="stable")[:TOP_CONFUSIONS] if off_diagonal.flat[c] > 0]
    rows = [[names[c // k], names[c % k], int(off_diagonal.flat[c]), float(off_diagonal.flat[c] / max(1, matrix[c // k].sum()))] for c in cells]
    sections.append("<h2>Top confusions</h2>" + (table(["true class", "predicted as", "images", "share of the true class"], rows) if rows else "<p>None: every image is right.</p>"))
    args = dict(num_classes=k, average=None)
    per_class = [F.classification.multiclass_precision(predicted, truth, **args), F.classification.multiclass_recall(predicted, truth, **args), F.classification.multiclass_f1_score(predicted, truth, **args)]
    support = np.bincount(truth.numpy(), minlength=k)
    sections.append("<h2>Per-class precision, recall, F1</h2>" + table(["class", "category id", "images", "precision", "recall", "F1"], [[names[j], index.label_map.category_id(j), int(support[j]), *(float(m[j]) for m in per_class)] for j in range(k)]))

    wrong = [i for i in np.argsort([-float(r["score"]) for r in records], kind="stable").tolist() if truth[i] != predicted[i]][:GALLERY_SIZE]
    figures = []
    for i in wrong:
        scores = np.zeros(k)
        scores[int(predicted[i])] = float(records[i]["score"])
        drawn = render(read_image(index.image_path(positions[i])), {"scores": scores}, names)
        caption = f"{index.file_names[positions[i]]} — true {names[int(truth[i])]}, predicted {names[int(predicted[i])]} ({float(records[i]['score']):.2f})"
        figures.append(f'<figure><img src="{jpeg_of_image(drawn)}" alt="{caption}"><figcaption>{caption}</figcaption></figure>')
    sections.append("<h2>Misclassified images</h2>" + (f'<p class="note">The most confident mistakes first (up to {GALLERY_SIZE}).</p>' + "".join(figures) if figures else "<p>None.</p>"))
    return write_page(out_dir, title, sections)


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
