"""Panoptic segmentation predictions for people and programs: COCO panoptic PNGs + json, a colour
overlay, and the serving answer (segments_info and the PNG as base64)."""
from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np

from cvengine.metrics.panoptic import id_to_rgb

# predict writes the PNGs here, relative to its output folder (COCO's layout: predictions.json
# beside predictions/).
PNG_FOLDER = "predictions"


def png_bytes(segment_map: np.ndarray) -> bytes:
    """(H, W) segment ids -> COCO panoptic PNG (id = R + 256 G + 256² B)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(id_to_rgb(segment_map)).save(buffer, format="PNG")
    return buffer.getvalue()


def segments_info(prediction: dict, label_to_category_id) -> list[dict]:
    segment_map = np.asarray(prediction["segment_map"])
    areas = np.bincount(segment_map.ravel().astype(np.int64), minlength=max([s["id"] for s in prediction["segments"]], default=0) + 1)
    return [
        {"id": int(s["id"]), "category_id": int(label_to_category_id[s["label"]]), "score": round(float(s["score"]), 5), "area": int(areas[s["id"]]), "iscrowd": 0}
        for s in prediction["segments"]
    ]


def records(prediction: dict, image_id: int, file_name: str, label_to_category_id, out_dir: Path) -> list[dict]:
    """Writes `out_dir/predictions/<n>.png` and returns the image's COCO panoptic annotation
    (file_name = the PNG inside predictions/, `image` = the input it was predicted on)."""
    folder = Path(out_dir) / PNG_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    png_name = f"{int(image_id):06d}.png"
    (folder / png_name).write_bytes(png_bytes(prediction["segment_map"]))
    return [{"image_id": int(image_id), "file_name": png_name, "image": file_name, "segments_info": segments_info(prediction, label_to_category_id)}]


def document(records: list[dict], categories: list[dict]) -> dict:
    """COCO panoptic predictions json: `annotations` (one per image) and `categories`."""
    return {"annotations": records, "categories": categories}


def keep_above(prediction: dict, threshold: float) -> dict:
    """Segments scoring below `threshold` are removed (their pixels become 0, no segment)."""
    dropped = [s["id"] for s in prediction["segments"] if s["score"] < threshold]
    if not dropped:
        return prediction
    segment_map = np.asarray(prediction["segment_map"]).copy()
    segment_map[np.isin(segment_map, dropped)] = 0
    return {**prediction, "segment_map": segment_map, "segments": [s for s in prediction["segments"] if s["score"] >= threshold]}


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


def serving_output(prediction: dict, class_names: list[str], label_to_category_id) -> dict:
    """`segments_info` (id, category_id, label, score, area) and `panoptic_png`: the COCO panoptic PNG
    of the segment ids, base64."""
    info = segments_info(prediction, label_to_category_id)
    for record, segment in zip(info, prediction["segments"]):
        record["label"] = class_names[segment["label"]]
    return {"segments_info": info, "panoptic_png": base64.b64encode(png_bytes(prediction["segment_map"])).decode("ascii")}
