"""Object detection: COCO boxes in, COCO bbox metrics (pycocotools) out."""
from cvengine.tasks.detection.task import DetectionTask

__all__ = ["DetectionTask"]
