"""A label map drawn on its image: each class's pixels tinted in the class's palette colour."""
from __future__ import annotations

import numpy as np


def render(image: np.ndarray, prediction: dict, class_names: list[str]) -> np.ndarray:
    import supervision as sv

    label_map = np.asarray(prediction["semantic_map"])
    labels = np.unique(label_map)
    masks = np.stack([label_map == k for k in labels]) if len(labels) else np.zeros((0, *label_map.shape), bool)
    detections = sv.Detections(xyxy=sv.mask_to_xyxy(masks).astype(np.float32), mask=masks, class_id=labels.astype(np.int64))
    return sv.MaskAnnotator(opacity=0.45).annotate(scene=image.copy(), detections=detections)
