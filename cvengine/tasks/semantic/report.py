"""The semantic segmentation report: mIoU, mean Dice and pixel accuracy, per-class IoU as bars and a
table, and the worst and best images by their own mIoU with ground truth and prediction overlaid."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from cvengine.data.masks import IGNORE
from cvengine.metrics.segmentation import confusion_matrix, metric_name, segmentation_scores
from cvengine.html_report import jpeg_of_image, png_of_figure, table, write_page

GALLERY_SIZE = 6


def _iou_figure(iou: np.ndarray, class_names: list[str]):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, max(2.5, 0.3 * len(class_names) + 1)))
    ax = figure.subplots()
    values = np.nan_to_num(iou)
    ax.barh(range(len(class_names)), values, color="#3b7dd8")
    ax.set_yticks(range(len(class_names)), labels=class_names)
    ax.invert_yaxis()
    ax.set(xlim=(0, 1), xlabel="IoU", title="Per-class IoU (absent classes: 0, marked — in the table)")
    ax.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    return figure


def write_semantic_report(index, predictions_path: str | os.PathLike, out_dir: str | os.PathLike, title: str = "") -> str:
    """Write `out_dir/report.html` for the evaluator's predictions.json (index of PNG label maps,
    paths relative to it) against `index`'s label maps."""
    from PIL import Image

    from cvengine.data.images import read_image
    from cvengine.tasks.semantic.render import render

    predictions_path = Path(predictions_path)
    document = json.loads(predictions_path.read_text())
    k, names = index.num_classes, index.class_names
    title = title or f"Semantic segmentation report — {Path(getattr(index, 'annotations_path', None) or index.images_dir).name}"
    total = np.zeros((k, k), np.int64)
    per_image, maps = [], {}
    for record in document["images"]:
        i = index.position(int(record["image_id"]))
        predicted = np.asarray(Image.open(predictions_path.parent / record["mask"]), dtype=np.int64)
        conf = confusion_matrix(index.semantic_map(i), predicted, k)
        total += conf
        per_image.append((segmentation_scores(conf, names, prefix="")["miou"], i))
        maps[i] = predicted
    scores = segmentation_scores(total, names, prefix="")
    iou = np.array([scores[f"iou/{metric_name(n)}"] for n in names])
    sections = [f'<p class="note">{len(index)} images; predictions: {predictions_path} ({len(document["images"])} label maps). Metrics at the original resolution; unlabelled pixels ignored.</p>']
    sections.append("<h2>Summary</h2>" + table(["metric", "value"], [["mIoU", scores["miou"]], ["mean Dice", scores["mean_dice"]], ["pixel accuracy", scores["pixel_accuracy"]]]))
    pixels = total.sum(axis=1)
    sections.append(f'<h2>Per-class IoU</h2><img src="{png_of_figure(_iou_figure(iou, names))}" alt="per-class IoU">' + table(["class", "GT pixels", "IoU"], [[n, int(pixels[j]), float(iou[j])] for j, n in enumerate(names)]))

    order = sorted(per_image)
    count = min(GALLERY_SIZE, (len(order) + 1) // 2)
    worst = order[:count]
    best = [item for item in order[::-1][:count] if item not in worst]

    def gallery(items):
        figures = []
        for miou, i in items:
            image = read_image(index.image_path(i))
            target = index.semantic_map(i)
            gt = render(image, {"semantic_map": target}, names)
            unlabelled = target == IGNORE
            gt[unlabelled] = image[unlabelled]
            predicted = render(image, {"semantic_map": maps[i]}, names)
            caption = f"{index.file_names[i]} — mIoU {miou:.2f} (left: ground truth, right: prediction)"
            figures.append(f'<figure><img src="{jpeg_of_image(np.concatenate([gt, predicted], axis=1), max_side=540)}" alt="{caption}"><figcaption>{caption}</figcaption></figure>')
        return "".join(figures)

    sections.append("<h2>Worst images</h2>" + gallery(worst))
    sections.append("<h2>Best images</h2>" + gallery(best))
    return write_page(out_dir, title, sections)
