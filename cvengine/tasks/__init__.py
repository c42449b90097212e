"""Task registry: what differs per task (datasets, metrics, main metric, prediction files)."""
from __future__ import annotations

from cvengine.tasks.classification import ClassificationTask
from cvengine.tasks.detection import DetectionTask
from cvengine.tasks.semantic import SemanticSegmentationTask
from cvengine.tasks.instance import InstanceSegmentationTask
from cvengine.tasks.panoptic import PanopticSegmentationTask

TASKS = {
    "detection": DetectionTask,
    "classification": ClassificationTask,
    "semantic_segmentation": SemanticSegmentationTask,
    "instance_segmentation": InstanceSegmentationTask,
    "panoptic_segmentation": PanopticSegmentationTask,
}


def get_task(name: str):
    from cvengine.errors import RecipeError

    if name not in TASKS:
        raise RecipeError(f"task '{name}' is not available yet; available: {', '.join(TASKS)}")
    return TASKS[name]()
