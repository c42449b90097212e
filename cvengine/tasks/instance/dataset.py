"""Samples of a COCO instances file with masks (polygons or RLE) for instance segmentation."""
from __future__ import annotations

from cvengine.data.dataset import MaskSampleDataset


class InstanceMaskDataset(MaskSampleDataset):
    """Samples of a CocoIndex loaded with keep_segmentation=True; crowd regions are not targets."""

    def targets(self, i):
        _, labels = self.index.targets(i)
        return self.index.masks(i), labels
