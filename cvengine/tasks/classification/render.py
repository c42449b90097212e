"""A classification drawn on its image: "name score" of the top class in the top-left corner."""
from __future__ import annotations

import numpy as np

from cvengine.tasks.classification.results import top_labels


def render(image: np.ndarray, prediction: dict, class_names: list[str]) -> np.ndarray:
    """The image with "name score" of the top class in its top-left corner (supervision's text drawing)."""
    import supervision as sv

    top = top_labels(prediction["scores"])[0]
    scene = image.copy()
    scale = max(image.shape[:2]) / 640
    sv.draw_text(scene=scene, text=f"{class_names[top]} {float(prediction['scores'][top]):.2f}", text_anchor=sv.Point(x=max(40, int(80 * scale)), y=max(12, int(24 * scale))), text_scale=max(0.35, 0.7 * scale), text_thickness=1, background_color=sv.Color.BLACK, text_color=sv.Color.WHITE)
    return scene
