"""One sample type for every task, and the COCO dataset that yields it."""
from __future__ import annotations

from typing import Callable, Optional

import attrs
import numpy as np
import torch

from cvengine.data.images import read_image


@attrs.define(slots=True)
class Sample:
    image: np.ndarray  # (H, W, 3) uint8 RGB, after augmentation and resize
    image_id: int
    orig_size: tuple  # (H, W) of the image file as read (EXIF applied), before any transform
    boxes_xyxy_abs: np.ndarray  # (N, 4) float32, pixels of `image`
    labels: np.ndarray  # (N,) int64 contiguous labels
    file_name: str = ""
    masks: Optional[np.ndarray] = None  # (N, H, W) uint8 0/1, one per box
    semantic_map: Optional[np.ndarray] = None  # (H, W) int64, 255 = ignore
    class_label: Optional[int] = None


class SampleDataset(torch.utils.data.Dataset):
    """Base of every task's dataset: an index, train-time augmentation and the adapter's resize.

    Augmentation is seeded per (seed, epoch, index), so a sample's augmentation does not depend on
    which worker loads it or on how many workers there are: a resumed run sees the same pixels.
    """

    def __init__(self, index, augment=None, resize: Callable | None = None, seed: int = 0):
        self.index = index
        self.augment = augment
        self.resize = resize
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        # Workers are re-created each epoch (no persistent workers), so they see the new value.
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.index)

    def augment_sample(self, i: int, **targets) -> dict:
        """Albumentations' output for sample i (image=…, bboxes=…, mask=…), seeded as above."""
        self.augment.set_random_seed((self.seed * 1_000_003 + self.epoch * 7_919 + i) % (2**31))
        return self.augment(**targets)


class CocoDetectionDataset(SampleDataset):
    """Samples of a CocoIndex; training targets exclude crowd regions."""

    def __getitem__(self, i: int) -> Sample:
        image = read_image(self.index.image_path(i))
        orig_size = image.shape[:2]
        boxes, labels = self.index.targets(i)
        if self.augment is not None:
            out = self.augment_sample(i, image=image, bboxes=boxes, labels=labels)
            image = out["image"]
            boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
            labels = np.asarray(out["labels"], dtype=np.int64).reshape(-1)
        if self.resize is not None:
            image, boxes, _ = self.resize(image, boxes)
        return Sample(
            image=np.ascontiguousarray(image),
            image_id=int(self.index.image_ids[i]),
            orig_size=tuple(int(v) for v in orig_size),
            boxes_xyxy_abs=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            labels=np.asarray(labels, dtype=np.int64).reshape(-1),
            file_name=self.index.file_names[i],
        )
