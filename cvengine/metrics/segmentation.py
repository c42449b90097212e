"""Semantic segmentation metrics from a confusion matrix accumulated over a whole split.

Per class c with TP = conf[c, c], FP = column sum - TP, FN = row sum - TP:
  IoU = TP / (TP + FP + FN),  Dice = 2 TP / (2 TP + FP + FN)
mIoU and mean Dice average the classes that occur in the ground truth or in the predictions of the
split (union > 0), as mmseg and torchmetrics' JaccardIndex do; pixel accuracy = trace / total.
Ignored pixels (label 255) are in no cell.
"""
from __future__ import annotations

import re

import numpy as np

from cvengine.data.masks import IGNORE


def metric_name(class_name: str) -> str:
    """A class name usable in a metric key: MLflow accepts letters, digits and _ - . / and spaces."""
    return re.sub(r"[^A-Za-z0-9_\-. ]", "_", class_name)


def confusion_matrix(target: np.ndarray, prediction: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) int64, rows = ground truth, columns = prediction, over the pixels whose target is
    not IGNORE. target, prediction: (H, W) integer maps of the same shape."""
    if target.shape != prediction.shape:
        raise ValueError(f"target {target.shape} and prediction {prediction.shape} differ in shape")
    valid = target != IGNORE
    t = target[valid].astype(np.int64)
    p = prediction[valid].astype(np.int64)
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def segmentation_scores(conf: np.ndarray, class_names: list[str], prefix: str = "val/") -> dict[str, float]:
    """mIoU, mean Dice, pixel accuracy and per-class IoU / Dice (NaN for a class absent from both
    the ground truth and the predictions)."""
    conf = conf.astype(np.float64)
    tp = np.diag(conf)
    fp = conf.sum(axis=0) - tp
    fn = conf.sum(axis=1) - tp
    union = tp + fp + fn
    present = union > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(present, tp / union, np.nan)
        dice = np.where(present, 2 * tp / (2 * tp + fp + fn), np.nan)
    total = conf.sum()
    metrics = {
        f"{prefix}miou": float(np.nanmean(iou)) if present.any() else 0.0,
        f"{prefix}mean_dice": float(np.nanmean(dice)) if present.any() else 0.0,
        f"{prefix}pixel_accuracy": float(tp.sum() / total) if total else 0.0,
    }
    for name, value in zip(class_names, iou):
        metrics[f"{prefix}iou/{metric_name(name)}"] = float(value)
    for name, value in zip(class_names, dice):
        metrics[f"{prefix}dice/{metric_name(name)}"] = float(value)
    return metrics
