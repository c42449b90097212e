"""The task registry: what differs per task (data, metrics, main metric, prediction files) lives in
one package per task, `cvengine/tasks/<task>/`. Adding a task = one package + one line here."""
from __future__ import annotations

from cvengine.tasks.classification import ClassificationTask
from cvengine.tasks.detection import DetectionTask
from cvengine.tasks.instance import InstanceSegmentationTask
from cvengine.tasks.panoptic import PanopticSegmentationTask
from cvengine.tasks.semantic import SemanticSegmentationTask

TASKS = {
    task.name: task
    for task in (DetectionTask, ClassificationTask, SemanticSegmentationTask, InstanceSegmentationTask, PanopticSegmentationTask)
}


def get_task(name: str):
    from cvengine.errors import RecipeError

    if name not in TASKS:
        raise RecipeError(f"task '{name}' is not available; available: {', '.join(TASKS)}")
    return TASKS[name]()
