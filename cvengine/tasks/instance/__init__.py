"""Instance segmentation: COCO instances with masks in, COCO segm and bbox metrics out."""
from cvengine.tasks.instance.task import InstanceSegmentationTask

__all__ = ["InstanceSegmentationTask"]
