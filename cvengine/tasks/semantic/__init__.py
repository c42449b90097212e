"""Semantic segmentation: label maps from COCO instances or PNG mask folders; mIoU and friends."""
from cvengine.tasks.semantic.task import SemanticSegmentationTask

__all__ = ["SemanticSegmentationTask"]
