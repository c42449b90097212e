"""THE writer of instance segmentation predictions: COCO results with RLE masks (and the mask's
`bbox`), the score filter, and the serving answer (boxes, labels, scores, RLE masks)."""
from __future__ import annotations

import numpy as np

from cvengine.tasks.detection import results as detection


def records(prediction: dict, image_id: int, file_name: str, label_map, out_dir=None) -> list[dict]:
    """COCO results: `segmentation` (RLE, counts str), `bbox` [x, y, w, h] of the mask in original
    pixels, ORIGINAL category ids, `score`, plus `file_name`. Scoring them as segm uses the masks
    alone (`cvengine.metrics.coco.evaluate_coco` leaves the bbox out)."""
    boxed = detection.records(prediction, image_id, file_name, label_map)
    return [{**record, "segmentation": {"size": list(rle["size"]), "counts": rle["counts"]}} for record, rle in zip(boxed, prediction["rles"])]


# The predictions file is the list of records, as for detection.
document = detection.document
write = detection.write


def keep_above(prediction: dict, threshold: float) -> dict:
    keep = np.asarray(prediction["scores"]) >= threshold
    kept = detection.keep_above(prediction, threshold)
    return {**kept, "rles": [rle for rle, k in zip(prediction["rles"], keep.tolist()) if k]}


def serving_output(prediction: dict, label_map) -> dict:
    """Detection's answer plus `masks_rle`: COCO RLEs ({size: [H, W], counts: str}) in pixels of the
    sent image, decodable with pycocotools.mask.decode."""
    answer = detection.serving_output(prediction, label_map)
    answer["masks_rle"] = [{"size": list(r["size"]), "counts": r["counts"]} for r in prediction["rles"]]
    return answer
