"""THE writer of classification predictions: one record per image (evaluate's and predict's
predictions.json), and the serving answer (HTTP, pyfunc)."""
from __future__ import annotations

import numpy as np

from cvengine.tasks.base import write_json

TOP_K = 5
# Multi-label: a class is predicted when its sigmoid probability reaches this.
MULTI_LABEL_THRESHOLD = 0.5


def top_labels(scores) -> list[int]:
    """Labels of the TOP_K highest scores, best first (ties: lower label first)."""
    return np.argsort(-np.asarray(scores), kind="stable")[:TOP_K].tolist()


def records(prediction: dict, image_id: int, file_name: str, label_map, out_dir=None) -> list[dict]:
    """One record: image_id, file_name, label (class name), category_id, score and the top-5
    [{label, category_id, score}]; multi-label predictions add `labels`, every class at or above
    MULTI_LABEL_THRESHOLD."""
    scores = np.asarray(prediction["scores"], dtype=np.float64)
    top = top_labels(scores)
    record = {
        "image_id": int(image_id),
        "file_name": file_name,
        "label": label_map.name(top[0]),
        "category_id": label_map.category_id(top[0]),
        "score": float(scores[top[0]]),
        "top5": [{"label": label_map.name(j), "category_id": label_map.category_id(j), "score": float(scores[j])} for j in top],
    }
    if prediction.get("multi_label"):
        record["labels"] = [label_map.name(j) for j in np.flatnonzero(scores >= MULTI_LABEL_THRESHOLD).tolist()]
    return [record]


def document(rows: list[dict], label_map=None) -> list[dict]:
    return rows


def write(path, rows: list[dict]) -> None:
    write_json(path, document(rows), indent=1)


def keep_above(prediction: dict, threshold: float) -> dict:
    return prediction  # every class keeps its probability; the top-5 are reported


def serving_output(prediction: dict, label_map) -> dict:
    scores = np.asarray(prediction["scores"], dtype=np.float64)
    top = top_labels(scores)
    return {"labels": [label_map.name(j) for j in top], "category_ids": [label_map.category_id(j) for j in top], "scores": scores[top].tolist()}
