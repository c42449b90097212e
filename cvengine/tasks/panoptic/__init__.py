"""Panoptic segmentation: COCO panoptic (json + PNG folder) in, PQ / SQ / RQ out."""
from cvengine.tasks.panoptic.task import PanopticSegmentationTask

__all__ = ["PanopticSegmentationTask"]
