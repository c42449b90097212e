"""A panoptic prediction drawn on its image: each segment tinted in its own colour, labelled."""
from __future__ import annotations

import numpy as np


def render(image: np.ndarray, prediction: dict, class_names: list[str]) -> np.ndarray:
    """Each segment tinted in its own colour, labelled "name score" (supervision)."""
    import supervision as sv

    segment_map = np.asarray(prediction["segment_map"])
    segments = prediction["segments"]
    if not segments:
        return image.copy()
    masks = np.stack([segment_map == s["id"] for s in segments])
    detections = sv.Detections(
        xyxy=sv.mask_to_xyxy(masks).astype(np.float32), mask=masks,
        class_id=np.array([s["label"] for s in segments], np.int64), confidence=np.array([s["score"] for s in segments], np.float32),
    )
    scale = max(image.shape[:2]) / 640
    scene = sv.MaskAnnotator(opacity=0.5, color_lookup=sv.ColorLookup.INDEX).annotate(scene=image.copy(), detections=detections)
    texts = [f"{class_names[s['label']] if s['label'] < len(class_names) else s['label']} {s['score']:.2f}" for s in segments]
    labels = sv.LabelAnnotator(text_scale=max(0.3, 0.5 * scale), text_padding=2, text_position=sv.Position.CENTER_OF_MASS, color_lookup=sv.ColorLookup.INDEX)
    return labels.annotate(scene=scene, detections=detections, labels=texts)
