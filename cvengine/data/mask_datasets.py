"""Datasets whose targets are one binary mask + class per object or segment (instance and panoptic
segmentation). Masks move with the image through augmentation and resize (nearest neighbour); boxes
are recomputed from the masks afterwards, and a mask emptied by a crop is dropped with its label."""
from __future__ import annotations


import numpy as np

from cvengine.data.dataset import Sample, SampleDataset
from cvengine.data.images import read_image


def boxes_from_masks(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) 0/1 -> (N, 4) float32 xyxy absolute, the tight box of each (non-empty) mask."""
    boxes = np.zeros((len(masks), 4), dtype=np.float32)
    for k, m in enumerate(masks):
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        if len(rows):
            boxes[k] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return boxes


class _MaskDataset(SampleDataset):
    def _targets(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def __getitem__(self, i: int) -> Sample:
        image = read_image(self.index.image_path(i))
        orig_size = image.shape[:2]
        masks, labels = self._targets(i)  # (N, H, W) uint8, (N,) int64
        if masks.shape[1:] != image.shape[:2]:
            from cvengine.errors import DataError

            raise DataError(f"{self.index.annotations_path}: image id {int(self.index.image_ids[i])}: masks are {masks.shape[2]}x{masks.shape[1]} but {self.index.image_path(i)} is {image.shape[1]}x{image.shape[0]}; run python -m cvengine.data check")
        if self.augment is not None:
            out = self.augment_sample(i, image=image, masks=list(masks)) if len(masks) else self.augment_sample(i, image=image)
            image = out["image"]
            if len(masks):
                masks = np.stack([np.asarray(m, dtype=np.uint8) for m in out["masks"]])
        if self.resize is not None:
            image, _, masks = self.resize(image, None, masks)
        if len(masks) == 0:
            masks = np.zeros((0,) + image.shape[:2], np.uint8)
        keep = masks.reshape(len(masks), -1).any(1)
        masks, labels = np.ascontiguousarray(masks[keep]), labels[keep]
        return Sample(
            image=np.ascontiguousarray(image),
            image_id=int(self.index.image_ids[i]),
            orig_size=tuple(int(v) for v in orig_size),
            boxes_xyxy_abs=boxes_from_masks(masks),
            labels=np.asarray(labels, dtype=np.int64).reshape(-1),
            file_name=self.index.file_names[i],
            masks=masks,
        )


class InstanceMaskDataset(_MaskDataset):
    """Samples of a CocoIndex loaded with keep_segmentation=True; crowd regions are not targets."""

    def _targets(self, i):
        _, labels = self.index.targets(i)
        return self.index.masks(i), labels


class PanopticDataset(_MaskDataset):
    """Samples of a PanopticIndex: one mask per non-crowd segment (things and stuff alike)."""

    def _targets(self, i):
        return self.index.targets(i)
