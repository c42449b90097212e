"""Classification predictions for people and programs: records like the evaluator's
predictions.json, the label written on the image, and the serving answer."""
from __future__ import annotations

import numpy as np

TOP_K = 5


def _top(scores: np.ndarray) -> list[int]:
    return np.argsort(-np.asarray(scores), kind="stable")[:TOP_K].tolist()


def records(prediction: dict, image_id: int, file_name: str, label_to_category_id, class_names: list[str]) -> list[dict]:
    """One record: image_id, file_name, label (class name), category_id, score and the top-5."""
    scores = np.asarray(prediction["scores"], dtype=np.float64)
    top = _top(scores)
    return [
        {
            "image_id": int(image_id),
            "file_name": file_name,
            "label": class_names[top[0]],
            "category_id": int(label_to_category_id[top[0]]),
            "score": round(float(scores[top[0]]), 5),
            "top5": [{"label": class_names[j], "category_id": int(label_to_category_id[j]), "score": round(float(scores[j]), 5)} for j in top],
        }
    ]


def render(image: np.ndarray, prediction: dict, class_names: list[str]) -> np.ndarray:
    """The image with "name score" of the top class in its top-left corner (supervision's text drawing)."""
    import supervision as sv

    top = _top(prediction["scores"])[0]
    scene = image.copy()
    scale = max(image.shape[:2]) / 640
    sv.draw_text(scene=scene, text=f"{class_names[top]} {float(prediction['scores'][top]):.2f}", text_anchor=sv.Point(x=max(40, int(80 * scale)), y=max(12, int(24 * scale))), text_scale=max(0.35, 0.7 * scale), text_thickness=1, background_color=sv.Color.BLACK, text_color=sv.Color.WHITE)
    return scene


def serving_output(prediction: dict, class_names: list[str], label_to_category_id) -> dict:
    scores = np.asarray(prediction["scores"], dtype=np.float64)
    top = _top(scores)
    return {"labels": [class_names[j] for j in top], "category_ids": [int(label_to_category_id[j]) for j in top], "scores": scores[top].tolist()}
