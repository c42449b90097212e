"""The instance segmentation report: detection's report parts on mask (segm) AP — COCO numbers,
per-class AP, precision-recall curves, a box confusion matrix — and the worst and best images with
ground-truth and predicted masks drawn."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from cvengine.data.coco import CocoIndex
from cvengine.html_report import jpeg_of_image, png_of_figure, write_page
from cvengine.tasks.detection.report import (
    CONFIDENCE_THRESHOLD, GALLERY_SIZE, GT_COLOR, IOU_THRESHOLD, PREDICTION_COLOR,
    _coco_eval, _confusion_figure, _targets_and_predictions, coco_metric_sections,
)


def _image_mask_f1(gt_rles: list, gt_labels: np.ndarray, rows: list[dict]) -> float:
    """F1 of one image: predictions ≥ CONFIDENCE_THRESHOLD matched greedily (by score) to same-class
    ground-truth masks at mask IoU ≥ IOU_THRESHOLD."""
    from pycocotools import mask as mask_utils

    rows = sorted((r for r in rows if r["score"] >= CONFIDENCE_THRESHOLD), key=lambda r: -r["score"])
    if not gt_rles and not rows:
        return 1.0
    if not gt_rles or not rows:
        return 0.0
    ious = mask_utils.iou([r["segmentation"] for r in rows], gt_rles, [0] * len(gt_rles))  # (P, G)
    matched: set = set()
    tp = 0
    for p, r in enumerate(rows):
        candidates = [(ious[p, g], g) for g in range(len(gt_rles)) if g not in matched and gt_labels[g] == r["label"] and ious[p, g] >= IOU_THRESHOLD]
        if candidates:
            matched.add(max(candidates)[1])
            tp += 1
    return 2 * tp / (len(gt_rles) + len(rows))


def write_instance_report(index: CocoIndex, predictions_path: str | os.PathLike, out_dir: str | os.PathLike, title: str = "") -> str:
    """Write `out_dir/report.html` for COCO results with RLE masks against `index`'s annotations."""
    from pycocotools import mask as mask_utils

    from cvengine.data.images import read_image
    from cvengine.tasks.instance.render import render

    results = json.loads(Path(predictions_path).read_text())
    title = title or f"Instance segmentation report — {Path(index.annotations_path).name}"
    sections = [f'<p class="note">Ground truth: {index.annotations_path} ({len(index)} images); predictions: {predictions_path} ({len(results)} masks). AP is mask (segm) AP.</p>']
    evaluator = _coco_eval(index, results, iou_type="segm")
    sections += coco_metric_sections(evaluator, index, heading="COCO segm metrics", gt_noun="GT instances")
    targets, predictions = _targets_and_predictions(index, results)
    figure, _ = _confusion_figure(targets, predictions, index.class_names)
    sections.append(f'<h2>Confusion matrix (boxes of the masks)</h2><img src="{png_of_figure(figure)}" alt="confusion matrix">')

    by_image: dict[int, list[dict]] = {}
    for r in results:
        by_image.setdefault(int(r["image_id"]), []).append({**r, "label": index.label_map.label_of(r["category_id"])})
    gt_rles, f1 = [], []
    for i, image_id in enumerate(index.image_ids.tolist()):
        masks = index.masks(i)  # (A, H, W) uint8, crowd left out
        rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0))) if len(masks) else []
        gt_rles.append(rles)
        f1.append(_image_mask_f1(rles, targets[i][1], by_image.get(image_id, [])))
    f1 = np.array(f1)
    order = np.argsort(f1, kind="stable")
    count = min(GALLERY_SIZE, (len(order) + 1) // 2)
    worst = order[:count].tolist()
    best = [i for i in order[::-1][:count].tolist() if i not in worst]

    def gallery(positions):
        figures = []
        for i in positions:
            image = read_image(index.image_path(i))
            gt_boxes, gt_labels = targets[i]
            rows = [r for r in by_image.get(int(index.image_ids[i]), []) if r["score"] >= CONFIDENCE_THRESHOLD]
            drawn = render(image, {"rles": gt_rles[i], "boxes_xyxy_abs": gt_boxes, "labels": gt_labels}, index.class_names, color=GT_COLOR)
            boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in rows)], np.float32).reshape(-1, 4)
            drawn = render(drawn, {"rles": [r["segmentation"] for r in rows], "boxes_xyxy_abs": boxes, "labels": np.array([r["label"] for r in rows], np.int64), "scores": np.array([r["score"] for r in rows], np.float32)}, index.class_names, color=PREDICTION_COLOR)
            caption = f"{index.file_names[i]} — mask F1 {f1[i]:.2f}, {len(gt_labels)} GT, {len(rows)} predictions"
            figures.append(f'<figure><img src="{jpeg_of_image(drawn)}" alt="{caption}"><figcaption>{caption}</figcaption></figure>')
        return "".join(figures)

    legend = f'<p class="note">Ground truth in green, predictions (score ≥ {CONFIDENCE_THRESHOLD}) in red; F1 at mask IoU {IOU_THRESHOLD}.</p>'
    sections.append("<h2>Worst images</h2>" + legend + gallery(worst))
    sections.append("<h2>Best images</h2>" + gallery(best))
    return write_page(out_dir, title, sections)
