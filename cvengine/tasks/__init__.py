"""Task registry: what differs per task (datasets, metrics, main metric, prediction files)."""
from __future__ import annotations

from cvengine.tasks.detection import DetectionTask

TASKS = {
    "detection": DetectionTask,
}


def get_task(name: str):
    from cvengine.errors import RecipeError

    if name not in TASKS:
        raise RecipeError(f"task '{name}' is not available yet; available: {', '.join(TASKS)}")
    return TASKS[name]()
