"""Instances drawn on an image: each mask tinted, then its box and "name score"."""
from __future__ import annotations

import numpy as np

from cvengine.tasks.detection import render as detection


def decode_masks(rles: list[dict], height: int, width: int) -> np.ndarray:
    """COCO RLEs (counts str or bytes) -> (N, H, W) bool."""
    from pycocotools import mask as mask_utils

    if not rles:
        return np.zeros((0, height, width), bool)
    encoded = [{"size": list(r["size"]), "counts": r["counts"].encode("ascii") if isinstance(r["counts"], str) else r["counts"]} for r in rles]
    return np.asarray(mask_utils.decode(encoded), dtype=bool).transpose(2, 0, 1)


def render(image: np.ndarray, prediction: dict, class_names: list[str], color: str | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB with each instance's mask tinted, then its box and "name score" drawn."""
    import supervision as sv

    masks = decode_masks(prediction["rles"], *image.shape[:2])
    detections = detection.to_supervision(prediction["boxes_xyxy_abs"], prediction["labels"], prediction.get("scores"))
    detections.mask = masks
    kwargs = {"color": detection.rgb_color(color), "color_lookup": sv.ColorLookup.INDEX} if color else {}
    tinted = sv.MaskAnnotator(opacity=0.4, **kwargs).annotate(scene=image.copy(), detections=detections)
    return detection.render(tinted, prediction, class_names, color=color)
