"""The detection evaluation report: COCO numbers, per-class AP, precision-recall curves (pycocotools'
accumulated `eval['precision']`), a confusion matrix at IoU 0.5 with a background row and column
(supervision), and the worst and best images with ground truth and predictions drawn."""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np

from cvengine.data.coco import CocoIndex
from cvengine.html_report import jpeg_of_image, png_of_figure, table, write_page

# Predictions below this score are left out of the confusion matrix and the gallery (the AP numbers
# use every prediction, as COCO evaluation does).
CONFIDENCE_THRESHOLD = 0.3
IOU_THRESHOLD = 0.5
GALLERY_SIZE = 6
GT_COLOR, PREDICTION_COLOR = "#20c040", "#ff3030"


def _coco_eval(index: CocoIndex, results: list[dict], iou_type: str = "bbox"):
    """The finished COCOeval of the results (None without any), for the per-class and PR sections."""
    from cvengine.metrics.coco import coco_evaluator

    return coco_evaluator(index.coco(), results, iou_type) if results else None


def _per_class_ap(evaluator, index: CocoIndex) -> list[list]:
    # precision: (T IoU thresholds, R recall points, K classes, A area ranges, M max-dets); -1 = no GT.
    precision = evaluator.eval["precision"]
    cat_pos = {c: k for k, c in enumerate(evaluator.params.catIds)}
    gt_counts = np.bincount(index.labels[~index.iscrowd], minlength=index.num_classes)
    rows = []
    for label, (cid, name) in enumerate(zip(index.label_map.category_ids.tolist(), index.class_names)):
        k = cat_pos[cid]
        p_all, p_50, p_75 = precision[:, :, k, 0, -1], precision[0, :, k, 0, -1], precision[5, :, k, 0, -1]
        mean = lambda p: float(p[p > -1].mean()) if (p > -1).any() else float("nan")  # noqa: E731
        rows.append([name, int(cid), int(gt_counts[label]), mean(p_all), mean(p_50), mean(p_75)])
    return rows


def _pr_figure(evaluator, index: CocoIndex):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    precision = evaluator.eval["precision"]
    recall = evaluator.params.recThrs
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, (t, iou) in zip(axes, ((0, "0.50"), (None, "0.50:0.95"))):
        p = precision[:, :, :, 0, -1] if t is None else precision[t : t + 1, :, :, 0, -1]  # (T, R, K)
        p = np.where(p > -1, p, np.nan)
        with warnings.catch_warnings():
            # Classes without ground truth are all-NaN columns: their mean is NaN, and not plotted.
            warnings.simplefilter("ignore", RuntimeWarning)
            per_class = np.nanmean(p, axis=0)  # (R, K)
            mean = np.nanmean(per_class, axis=1)  # (R,)
        if len(index.class_names) <= 20:
            for k, name in enumerate(index.class_names):
                ax.plot(recall, per_class[:, k], linewidth=1, alpha=0.7, label=name)
        ax.plot(recall, mean, color="black", linewidth=2.5, label="mean")
        ax.set(xlabel="recall", ylabel="precision", title=f"IoU {iou}", xlim=(0, 1), ylim=(0, 1.02))
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="upper right", ncol=2)
    return figure


def _targets_and_predictions(index: CocoIndex, results: list[dict]):
    """Per image position: GT (boxes, labels) without crowd, predictions (boxes, labels, scores)."""
    by_image: dict[int, list[dict]] = {}
    for r in results:
        by_image.setdefault(int(r["image_id"]), []).append(r)
    targets, predictions = [], []
    for i, image_id in enumerate(index.image_ids.tolist()):
        targets.append(index.targets(i))
        rows = by_image.get(image_id, [])
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in rows)], dtype=np.float32).reshape(-1, 4)
        labels = np.array([index.label_map.label_of(r["category_id"]) for r in rows], dtype=np.int64)
        scores = np.array([float(r["score"]) for r in rows], dtype=np.float32)
        predictions.append((boxes, labels, scores))
    return targets, predictions


def _image_f1(target, prediction, conf: float, iou: float) -> float:
    """F1 of one image: predictions ≥ conf matched greedily (by score) to same-class GT at IoU ≥ iou."""
    import supervision as sv

    gt_boxes, gt_labels = target
    boxes, labels, scores = prediction
    keep = scores >= conf
    boxes, labels, scores = boxes[keep], labels[keep], scores[keep]
    if len(gt_boxes) == 0 and len(boxes) == 0:
        return 1.0
    if len(gt_boxes) == 0 or len(boxes) == 0:
        return 0.0
    ious = sv.box_iou_batch(gt_boxes, boxes)  # (G, P)
    matched_gt: set = set()
    tp = 0
    for p in np.argsort(-scores):
        candidates = [(ious[g, p], g) for g in range(len(gt_boxes)) if g not in matched_gt and gt_labels[g] == labels[p] and ious[g, p] >= iou]
        if candidates:
            matched_gt.add(max(candidates)[1])
            tp += 1
    return 2 * tp / (len(gt_boxes) + len(boxes))


def _confusion_figure(targets, predictions, class_names: list[str]):
    import matplotlib

    matplotlib.use("Agg")
    import supervision as sv

    from cvengine.tasks.detection.render import to_supervision

    matrix = sv.ConfusionMatrix.from_detections(
        predictions=[to_supervision(b, l, s) for b, l, s in predictions],
        targets=[to_supervision(b, l) for b, l in targets],
        classes=list(class_names),
        conf_threshold=CONFIDENCE_THRESHOLD,
        iou_threshold=IOU_THRESHOLD,
    )
    size = min(14, 4 + 0.5 * len(class_names))
    return matrix.plot(title=f"Confusion matrix (IoU {IOU_THRESHOLD}, score ≥ {CONFIDENCE_THRESHOLD}); last row/column: background", fig_size=(size, size * 0.85)), matrix.matrix


def _gallery(index: CocoIndex, targets, predictions, positions: list[int], f1: np.ndarray) -> str:
    from cvengine.data.images import read_image
    from cvengine.tasks.detection.render import render

    figures = []
    for i in positions:
        image = read_image(index.image_path(i))
        gt_boxes, gt_labels = targets[i]
        boxes, labels, scores = predictions[i]
        keep = scores >= CONFIDENCE_THRESHOLD
        drawn = render(image, {"boxes_xyxy_abs": gt_boxes, "labels": gt_labels}, index.class_names, color=GT_COLOR)
        drawn = render(drawn, {"boxes_xyxy_abs": boxes[keep], "labels": labels[keep], "scores": scores[keep]}, index.class_names, color=PREDICTION_COLOR)
        caption = f"{index.file_names[i]} — F1 {f1[i]:.2f}, {len(gt_boxes)} GT, {int(keep.sum())} predictions"
        figures.append(f'<figure><img src="{jpeg_of_image(drawn)}" alt="{caption}"><figcaption>{caption}</figcaption></figure>')
    return "".join(figures)


def coco_metric_sections(evaluator, index, heading: str, gt_noun: str) -> list[str]:
    """HTML sections from a finished COCOeval: the 12 numbers, per-class AP, precision-recall curves."""
    from cvengine.metrics.coco import COCO_METRIC_KEYS

    if evaluator is None:
        return ["<p>No predictions: every AP is 0.</p>"]
    return [
        f"<h2>{heading}</h2>" + table(["metric", "value"], [[k, float(v)] for k, v in zip(COCO_METRIC_KEYS, evaluator.stats)]),
        "<h2>Per-class AP</h2>" + table(["class", "category id", gt_noun, "AP", "AP50", "AP75"], _per_class_ap(evaluator, index)),
        f'<h2>Precision–recall</h2><img src="{png_of_figure(_pr_figure(evaluator, index))}" alt="precision-recall curves">',
    ]


def write_detection_report(index: CocoIndex, predictions_path: str | os.PathLike, out_dir: str | os.PathLike, title: str = "") -> str:
    """Write `out_dir/report.html` for the COCO results in `predictions_path` against `index`'s
    annotations file; returns the file's path."""
    results = json.loads(Path(predictions_path).read_text())
    title = title or f"Detection report — {Path(index.annotations_path).name}"
    evaluator = _coco_eval(index, results)
    sections = [f'<p class="note">Ground truth: {index.annotations_path} ({len(index)} images); predictions: {predictions_path} ({len(results)} boxes).</p>']

    sections += coco_metric_sections(evaluator, index, heading="COCO metrics", gt_noun="GT boxes")

    targets, predictions = _targets_and_predictions(index, results)
    figure, _ = _confusion_figure(targets, predictions, index.class_names)
    sections.append(f'<h2>Confusion matrix</h2><img src="{png_of_figure(figure)}" alt="confusion matrix">')

    f1 = np.array([_image_f1(t, p, CONFIDENCE_THRESHOLD, IOU_THRESHOLD) for t, p in zip(targets, predictions)])
    order = np.argsort(f1, kind="stable")
    count = min(GALLERY_SIZE, (len(order) + 1) // 2)
    worst = order[:count].tolist()
    best = [i for i in order[::-1][:count].tolist() if i not in worst]
    legend = f'<p class="note">Ground truth in green, predictions (score ≥ {CONFIDENCE_THRESHOLD}) in red; F1 at IoU {IOU_THRESHOLD}.</p>'
    sections.append("<h2>Worst images</h2>" + legend + _gallery(index, targets, predictions, worst, f1))
    sections.append("<h2>Best images</h2>" + _gallery(index, targets, predictions, best, f1))

    return write_page(out_dir, title, sections)
