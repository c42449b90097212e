"""THE writer of semantic segmentation predictions: PNG label maps (contiguous labels) in a folder
beside the json index that lists them (evaluate's and predict's predictions.json), and the serving
answer (the label map as a base64 PNG)."""
from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np

from cvengine.tasks.base import png_name, write_json, write_png


def png_bytes(label_map: np.ndarray) -> bytes:
    """(H, W) contiguous labels -> PNG (8-bit, 16-bit past 255 classes)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(label_map).astype(np.uint8 if label_map.max(initial=0) < 256 else np.uint16)).save(buffer, format="PNG")
    return buffer.getvalue()


def records(prediction: dict, image_id: int, file_name: str, label_map, out_dir) -> list[dict]:
    """Writes the label map as `out_dir/<image path>.png` and returns its index record
    (`mask`: the PNG's path relative to the json, which lies beside `out_dir`)."""
    name = png_name(file_name, image_id)
    write_png(out_dir, name, png_bytes(prediction["semantic_map"]))
    return [{"image_id": int(image_id), "file_name": file_name, "mask": f"{Path(out_dir).name}/{name}"}]


def document(rows: list[dict], label_map) -> dict:
    return {"classes": list(label_map.names), "category_ids": label_map.category_ids.tolist(), "images": rows}


def write(path, rows: list[dict], label_map) -> None:
    write_json(path, document(rows, label_map), indent=1)


def keep_above(prediction: dict, threshold: float) -> dict:
    return prediction  # a label map has no scores to threshold


def serving_output(prediction: dict, label_map) -> dict:
    label_map_array = np.asarray(prediction["semantic_map"])
    present = [k for k in np.unique(label_map_array).tolist() if k < len(label_map)]
    return {
        "mask_png": base64.b64encode(png_bytes(label_map_array)).decode("ascii"),
        "labels": [label_map.name(k) for k in present],
        "category_ids": [label_map.category_id(k) for k in present],
    }
