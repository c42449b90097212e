"""Instance segmentation predictions for people and programs: COCO results with RLE masks, the
masks drawn on the image, and the serving answer (boxes, labels, scores, RLE masks)."""
from __future__ import annotations

import numpy as np

from cvengine.serving import detection


def records(prediction: dict, image_id: int, file_name: str, label_to_category_id: np.ndarray) -> list[dict]:
    """COCO results (`segmentation` RLE with str counts, `bbox` [x, y, w, h] of the mask in original
    pixels, ORIGINAL category ids, `score`) plus `file_name`."""
    boxed = detection.records(prediction, image_id, file_name, label_to_category_id)
    return [{**record, "segmentation": {"size": list(rle["size"]), "counts": rle["counts"]}} for record, rle in zip(boxed, prediction["rles"])]


def keep_above(prediction: dict, threshold: float) -> dict:
    keep = np.asarray(prediction["scores"]) >= threshold
    kept = detection.keep_above(prediction, threshold)
    return {**kept, "rles": [rle for rle, k in zip(prediction["rles"], keep.tolist()) if k]}


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


def serving_output(prediction: dict, class_names: list[str], label_to_category_id: np.ndarray) -> dict:
    """Detection's answer plus `masks_rle`: COCO RLEs ({size: [H, W], counts: str}) in pixels of the
    sent image, decodable with pycocotools.mask.decode."""
    answer = detection.serving_output(prediction, class_names, label_to_category_id)
    answer["masks_rle"] = [{"size": list(r["size"]), "counts": r["counts"]} for r in prediction["rles"]]
    return answer
