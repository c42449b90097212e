"""One sample type for every task, and the base datasets the task packages build on."""
from __future__ import annotations

import random
from typing import Callable, Optional

import attrs
import numpy as np
import torch

from cvengine.data.decode import device_decodable_jpeg, placeholder_image
from cvengine.data.images import DEFAULT_MAX_IMAGE_PIXELS, read_image
from cvengine.errors import DataError


@attrs.define(slots=True)
class Sample:
    image: np.ndarray  # (H, W, 3) uint8 RGB, after augmentation and resize
    image_id: int
    orig_size: tuple  # (H, W) of the image file as read (EXIF applied), before any transform
    boxes_xyxy_abs: np.ndarray  # (N, 4) float32, pixels of `image`
    labels: np.ndarray  # (N,) int64 contiguous labels
    file_name: str = ""
    masks: Optional[np.ndarray] = None  # (N, H, W) uint8 0/1, one per box
    semantic_map: Optional[np.ndarray] = None  # (H, W) uint8 labels (fewer than 255 classes), 255 = ignore
    class_label: Optional[int] = None


def augmentation_streams(seed: int, epoch: int, index: int) -> tuple[np.random.Generator, random.Random]:
    """The random streams of one sample's augmentation: a function of (seed, epoch, index) alone,
    so that it does not depend on which loader worker reads the sample or on how many there are,
    and distinct (seed, epoch, index) triples never share a stream."""
    sequence = np.random.SeedSequence([int(seed) % 2**63, int(epoch), int(index)])
    numpy_stream, python_seed = sequence.spawn(2)
    return np.random.default_rng(numpy_stream), random.Random(int(python_seed.generate_state(1)[0]))


class SampleDataset(torch.utils.data.Dataset):
    """Base of every task's dataset: an index, train-time augmentation and the adapter's resize.

    Every transform of a sample's augmentation draws from ONE stream (numpy and Python generators
    shared by the whole pipeline): with a stream per transform, seeded alike, the transforms' coin
    flips would be the same draws and their decisions correlated.
    """

    # data.max_image_pixels (set by the engine): larger images are refused before decoding.
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    # data.decode on the device (set by the engine): JPEGs that decode as they are stay undecoded
    # here (a placeholder of their size, see cvengine.data.decode).
    decode_on_device: bool = False

    def __init__(self, index, augment=None, resize: Callable | None = None, seed: int = 0):
        self.index = index
        self.augment = augment
        self.resize = resize
        self.seed = seed
        # In shared memory: persistent loader workers hold a copy of this dataset made when they
        # started, and must still see the epoch set afterwards (set before the epoch's first index
        # is sent to them).
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(epoch)

    def __len__(self) -> int:
        return len(self.index)

    def augment_sample(self, i: int, **targets) -> dict:
        """Albumentations' output for sample i (image=…, bboxes=…, mask=…), drawn from its streams."""
        self.augment.set_random_state(*augmentation_streams(self.seed, self.epoch, i))
        return self.augment(**targets)

    def read_checked(self, i: int) -> np.ndarray:
        """Image position i as (H, W, 3) uint8 RGB, refusing a file whose size (EXIF orientation
        applied) is not the record's: boxes and masks would land in the wrong place."""
        path = self.index.image_path(i)
        size = device_decodable_jpeg(path, self.max_image_pixels) if self.decode_on_device else None
        image = placeholder_image(*size) if size is not None else read_image(path, self.max_image_pixels)
        expected = (int(self.index.heights[i]), int(self.index.widths[i]))
        if expected != image.shape[:2] and min(expected) > 0:
            swapped = " (swapped: EXIF orientation rotates this file)" if expected == image.shape[1::-1] else ""
            raise DataError(
                f"{self.index.annotations_path}: image id {int(self.index.image_ids[i])}: {path} is {image.shape[1]}x{image.shape[0]}"
                f" (width x height, EXIF orientation applied) but the record says {expected[1]}x{expected[0]}{swapped}; run python -m cvengine.data check"
            )
        return image


def boxes_from_masks(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) 0/1 -> (N, 4) float32 xyxy absolute, the tight box of each (non-empty) mask."""
    boxes = np.zeros((len(masks), 4), dtype=np.float32)
    for k, m in enumerate(masks):
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        if len(rows):
            boxes[k] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return boxes


class MaskSampleDataset(SampleDataset):
    """Datasets whose targets are one binary mask + class per object or segment (instance and
    panoptic segmentation). Masks move with the image through augmentation and resize (nearest
    neighbour); boxes are recomputed from the masks afterwards, and a mask emptied by a crop is
    dropped with its label. Subclasses give `targets(i)`."""

    def targets(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(N, H, W) uint8 masks and (N,) int64 labels of image position i, at its original size."""
        raise NotImplementedError

    def __getitem__(self, i: int) -> Sample:
        image = self.read_checked(i)
        orig_size = image.shape[:2]
        masks, labels = self.targets(i)
        if masks.shape[1:] != image.shape[:2]:
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
