"""THE writer of panoptic predictions: COCO panoptic PNGs (segment ids as RGB) in a folder beside
the json (annotations with `segments_info`, categories) — evaluate's and predict's predictions.json —
the score filter, and the serving answer (segments_info and the PNG as base64)."""
from __future__ import annotations

import base64
import io

import numpy as np

from cvengine.metrics.panoptic import id_to_rgb
from cvengine.tasks.base import png_name, write_json, write_png


def png_bytes(segment_map: np.ndarray) -> bytes:
    """(H, W) segment ids -> COCO panoptic PNG (id = R + 256 G + 256² B)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(id_to_rgb(segment_map)).save(buffer, format="PNG")
    return buffer.getvalue()


def segments_info(prediction: dict, label_map) -> list[dict]:
    segment_map = np.asarray(prediction["segment_map"])
    areas = np.bincount(segment_map.ravel().astype(np.int64), minlength=max([s["id"] for s in prediction["segments"]], default=0) + 1)
    return [
        {"id": int(s["id"]), "category_id": label_map.category_id(s["label"]), "score": float(s["score"]), "area": int(areas[s["id"]]), "iscrowd": 0}
        for s in prediction["segments"]
    ]


def records(prediction: dict, image_id: int, file_name: str, label_map, out_dir) -> list[dict]:
    """Writes the segment map as `out_dir/<image path>.png` and returns the image's COCO panoptic
    annotation (`file_name`: the PNG inside `out_dir`; `image`: the image it was predicted on)."""
    name = png_name(file_name, image_id)
    write_png(out_dir, name, png_bytes(prediction["segment_map"]))
    return [{"image_id": int(image_id), "file_name": name, "image": file_name, "segments_info": segments_info(prediction, label_map)}]


def document(rows: list[dict], label_map) -> dict:
    """COCO panoptic predictions json: `annotations` (one per image) and `categories`."""
    return {"annotations": rows, "categories": label_map.categories}


def write(path, rows: list[dict], label_map) -> None:
    write_json(path, document(rows, label_map))


def keep_above(prediction: dict, threshold: float) -> dict:
    """Segments scoring below `threshold` are removed (their pixels become 0, no segment)."""
    dropped = [s["id"] for s in prediction["segments"] if s["score"] < threshold]
    if not dropped:
        return prediction
    segment_map = np.asarray(prediction["segment_map"]).copy()
    segment_map[np.isin(segment_map, dropped)] = 0
    return {**prediction, "segment_map": segment_map, "segments": [s for s in prediction["segments"] if s["score"] >= threshold]}


def serving_output(prediction: dict, label_map) -> dict:
    """`segments_info` (id, category_id, label, score, area) and `panoptic_png`: the COCO panoptic PNG
    of the segment ids, base64."""
    info = segments_info(prediction, label_map)
    for record, segment in zip(info, prediction["segments"]):
        record["label"] = label_map.name(segment["label"])
    return {"segments_info": info, "panoptic_png": base64.b64encode(png_bytes(prediction["segment_map"])).decode("ascii")}
