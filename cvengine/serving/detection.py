"""Detection predictions for people and programs: COCO result records, rendered images and the
serving answer. The task class exposes these as its inference hooks."""
from __future__ import annotations

import numpy as np


def records(prediction: dict, image_id: int, file_name: str, label_to_category_id: np.ndarray) -> list[dict]:
    """COCO results (`bbox` [x, y, w, h] in original pixels, ORIGINAL category ids) plus `file_name`."""
    boxes = np.asarray(prediction["boxes_xyxy_abs"], dtype=np.float64).reshape(-1, 4)
    category_ids = label_to_category_id[np.asarray(prediction["labels"], dtype=np.int64)]
    return [
        {"image_id": int(image_id), "file_name": file_name, "category_id": int(c), "bbox": [round(float(x0), 2), round(float(y0), 2), round(float(x1 - x0), 2), round(float(y1 - y0), 2)], "score": round(float(s), 5)}
        for (x0, y0, x1, y1), s, c in zip(boxes.tolist(), prediction["scores"], category_ids.tolist())
    ]


def keep_above(prediction: dict, threshold: float) -> dict:
    keep = np.asarray(prediction["scores"]) >= threshold
    return {**prediction, "boxes_xyxy_abs": np.asarray(prediction["boxes_xyxy_abs"])[keep], "scores": np.asarray(prediction["scores"])[keep], "labels": np.asarray(prediction["labels"])[keep]}


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


def render(image: np.ndarray, prediction: dict, class_names: list[str], color: str | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB with the prediction's boxes and "name score" labels drawn (supervision)."""
    import supervision as sv

    detections = to_supervision(prediction["boxes_xyxy_abs"], prediction["labels"], prediction.get("scores"))
    scale = max(image.shape[:2]) / 640
    thickness = max(1, int(round(2 * scale)))
    kwargs = {"color": rgb_color(color), "color_lookup": sv.ColorLookup.INDEX} if color else {}
    boxes = sv.BoxAnnotator(thickness=thickness, **kwargs)
    labels = sv.LabelAnnotator(text_scale=max(0.3, 0.5 * scale), text_thickness=max(1, thickness // 2), text_padding=2, **kwargs)
    names = [class_names[c] if 0 <= c < len(class_names) else str(c) for c in detections.class_id]
    texts = names if detections.confidence is None else [f"{n} {s:.2f}" for n, s in zip(names, detections.confidence)]
    canvas = boxes.annotate(scene=image.copy(), detections=detections)
    return labels.annotate(scene=canvas, detections=detections, labels=texts)


def serving_output(prediction: dict, class_names: list[str], label_to_category_id: np.ndarray) -> dict:
    """One image's answer: boxes [x0, y0, x1, y1] in pixels of the sent image, scores, class names and
    the data set's category ids."""
    labels = np.asarray(prediction["labels"], dtype=np.int64)
    return {
        "boxes_xyxy": np.asarray(prediction["boxes_xyxy_abs"], dtype=np.float64).reshape(-1, 4).tolist(),
        "scores": np.asarray(prediction["scores"], dtype=np.float64).tolist(),
        "labels": [class_names[i] for i in labels.tolist()],
        "category_ids": label_to_category_id[labels].tolist(),
    }
