"""THE writer of detection predictions: COCO result records (evaluate's and predict's
predictions.json), the score filter, and the serving answer (HTTP, pyfunc). Boxes keep full float
precision, so that scoring the written file gives the numbers the run computed."""
from __future__ import annotations

import numpy as np

from cvengine.tasks.base import write_json


def records(prediction: dict, image_id: int, file_name: str, label_map, out_dir=None) -> list[dict]:
    """COCO results: `bbox` [x, y, w, h] in original-image pixels, ORIGINAL category ids, `score`,
    plus `file_name` (the image the prediction is for)."""
    boxes = np.asarray(prediction["boxes_xyxy_abs"], dtype=np.float64).reshape(-1, 4)
    category_ids = label_map.category_ids_of(prediction["labels"])
    scores = np.asarray(prediction["scores"], dtype=np.float64).reshape(-1)
    return [
        {"image_id": int(image_id), "file_name": file_name, "category_id": int(c), "bbox": [x0, y0, x1 - x0, y1 - y0], "score": s}
        for (x0, y0, x1, y1), s, c in zip(boxes.tolist(), scores.tolist(), category_ids.tolist())
    ]


def document(rows: list[dict], label_map=None) -> list[dict]:
    """The predictions file: the list of records (COCO results format)."""
    return rows


def write(path, rows: list[dict]) -> None:
    write_json(path, document(rows))


def keep_above(prediction: dict, threshold: float) -> dict:
    keep = np.asarray(prediction["scores"]) >= threshold
    return {**prediction, "boxes_xyxy_abs": np.asarray(prediction["boxes_xyxy_abs"])[keep], "scores": np.asarray(prediction["scores"])[keep], "labels": np.asarray(prediction["labels"])[keep]}


def serving_output(prediction: dict, label_map) -> dict:
    """One image's answer: boxes [x0, y0, x1, y1] in pixels of the sent image, scores, class names and
    the data set's category ids."""
    labels = np.asarray(prediction["labels"], dtype=np.int64)
    return {
        "boxes_xyxy": np.asarray(prediction["boxes_xyxy_abs"], dtype=np.float64).reshape(-1, 4).tolist(),
        "scores": np.asarray(prediction["scores"], dtype=np.float64).tolist(),
        "labels": [label_map.name(i) for i in labels.tolist()],
        "category_ids": label_map.category_ids_of(labels).tolist(),
    }
