"""Semantic segmentation predictions for people and programs: PNG label maps beside the json, a
colour overlay, and the serving answer (the label map as a base64 PNG)."""
from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np


def _png(label_map: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(label_map.astype(np.uint8 if label_map.max(initial=0) < 256 else np.uint16)).save(buffer, format="PNG")
    return buffer.getvalue()


def records(prediction: dict, image_id: int, file_name: str, out_dir: Path) -> list[dict]:
    """Writes `out_dir/predictions/<n>.png` (contiguous labels) and returns its index record."""
    folder = Path(out_dir) / "predictions"
    folder.mkdir(parents=True, exist_ok=True)
    mask_name = f"{int(image_id):06d}.png"
    (folder / mask_name).write_bytes(_png(prediction["semantic_map"]))
    return [{"image_id": int(image_id), "file_name": file_name, "mask": f"predictions/{mask_name}"}]


def document(records: list[dict], class_names: list[str], label_to_category_id) -> dict:
    return {"classes": list(class_names), "category_ids": [int(c) for c in label_to_category_id], "images": records}


def render(image: np.ndarray, prediction: dict, class_names: list[str]) -> np.ndarray:
    """The image with each class's pixels tinted in the class's palette colour (supervision)."""
    import supervision as sv

    label_map = np.asarray(prediction["semantic_map"])
    labels = np.unique(label_map)
    masks = np.stack([label_map == k for k in labels]) if len(labels) else np.zeros((0, *label_map.shape), bool)
    detections = sv.Detections(xyxy=sv.mask_to_xyxy(masks).astype(np.float32), mask=masks, class_id=labels.astype(np.int64))
    return sv.MaskAnnotator(opacity=0.45).annotate(scene=image.copy(), detections=detections)


def serving_output(prediction: dict, class_names: list[str], label_to_category_id) -> dict:
    label_map = np.asarray(prediction["semantic_map"])
    present = np.unique(label_map).tolist()
    return {
        "mask_png": base64.b64encode(_png(label_map)).decode("ascii"),
        "labels": [class_names[k] for k in present if k < len(class_names)],
        "category_ids": [int(label_to_category_id[k]) for k in present if k < len(class_names)],
    }
