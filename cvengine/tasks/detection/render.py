"""Detections drawn on an image (supervision): boxes and "name score" labels."""
from __future__ import annotations

import numpy as np

# Boxes overlapping more than this are the same object predicted with several classes (DETR-style
# models score every class of every query): only the best-scoring one is drawn.
SAME_BOX_IOU = 0.9


def to_supervision(boxes_xyxy_abs, labels, scores=None):
    import supervision as sv

    return sv.Detections(
        xyxy=np.asarray(boxes_xyxy_abs, dtype=np.float32).reshape(-1, 4),
        class_id=np.asarray(labels, dtype=np.int64).reshape(-1),
        confidence=None if scores is None else np.asarray(scores, dtype=np.float32).reshape(-1),
    )


def rgb_color(hex_color: str):
    """A supervision Color that comes out as `hex_color` on an RGB array (supervision's annotators
    write colours in OpenCV's BGR order)."""
    import supervision as sv

    c = sv.Color.from_hex(hex_color)
    return sv.Color(r=c.b, g=c.g, b=c.r)


def best_per_box(detections):
    """One detection per object: among boxes overlapping more than SAME_BOX_IOU, the best-scoring;
    ordered by ascending score so that the best label is drawn last, on top."""
    if detections.confidence is None or len(detections) == 0:
        return detections
    import supervision as sv

    order = np.argsort(-detections.confidence, kind="stable")
    detections = detections[order]
    ious = sv.box_iou_batch(detections.xyxy, detections.xyxy)
    keep: list[int] = []
    for k in range(len(detections)):
        if all(ious[k, j] <= SAME_BOX_IOU for j in keep):
            keep.append(k)
    return detections[np.array(keep[::-1], dtype=np.int64)]


def render(image: np.ndarray, prediction: dict, class_names: list[str], color: str | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB with the prediction's boxes and "name score" labels drawn (supervision)."""
    import supervision as sv

    detections = best_per_box(to_supervision(prediction["boxes_xyxy_abs"], prediction["labels"], prediction.get("scores")))
    scale = max(image.shape[:2]) / 640
    thickness = max(1, int(round(2 * scale)))
    kwargs = {"color": rgb_color(color), "color_lookup": sv.ColorLookup.INDEX} if color else {}
    boxes = sv.BoxAnnotator(thickness=thickness, **kwargs)
    labels = sv.LabelAnnotator(text_scale=max(0.3, 0.5 * scale), text_thickness=max(1, thickness // 2), text_padding=2, **kwargs)
    names = [class_names[c] if 0 <= c < len(class_names) else str(c) for c in detections.class_id]
    texts = names if detections.confidence is None else [f"{n} {s:.2f}" for n, s in zip(names, detections.confidence)]
    canvas = boxes.annotate(scene=image.copy(), detections=detections)
    return labels.annotate(scene=canvas, detections=detections, labels=texts)
