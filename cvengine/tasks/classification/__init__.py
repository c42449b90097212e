"""Image classification: COCO or ImageFolder data; accuracy, F1, precision, recall (torchmetrics)."""
from cvengine.tasks.classification.task import ClassificationTask

__all__ = ["ClassificationTask"]
