"""COCO panoptic data: a json (images, annotations with `segments_info`, categories with `isthing`)
plus a folder of PNGs whose RGB colour encodes the segment id (id = R + 256 G + 256² B, 0 = void).

    PanopticIndex    the parsed json: the label map (contiguous labels ordered by category id), per
                     image its PNG name and segments
    PanopticDataset  samples with one mask per non-crowd segment (things and stuff alike)
"""
from __future__ import annotations

import os

import numpy as np

from cvengine.data.coco import ImageIndex, LabelMap, read_json
from cvengine.data.dataset import MaskSampleDataset
from cvengine.errors import DataError
from cvengine.metrics.panoptic import read_panoptic_png


class PanopticIndex(ImageIndex):
    """One COCO panoptic json. Per image position i: `image_ids[i]`, `file_names[i]` (the image),
    `png_names[i]` (its segment PNG under `masks_dir`), `segments[i]` = list of
    (segment_id, label, iscrowd)."""

    def __init__(self, data: dict, annotations_path: str, images_dir: str, masks_dir: str):
        path = annotations_path
        self.annotations_path = str(annotations_path)
        self.images_dir = str(images_dir)
        self.masks_dir = str(masks_dir)
        if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
            raise DataError(f"{path}: a COCO panoptic file needs lists 'images', 'annotations' (with segments_info) and 'categories'")
        self.label_map = LabelMap.from_categories(data["categories"], path)
        self.isthing = self.label_map.isthing

        images = data["images"]
        try:
            self.image_ids = np.array([int(im["id"]) for im in images], dtype=np.int64)
            self.file_names = [str(im["file_name"]) for im in images]
            self.heights = np.array([int(im.get("height", 0)) for im in images], dtype=np.int64)
            self.widths = np.array([int(im.get("width", 0)) for im in images], dtype=np.int64)
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{path}: every image record needs 'id' and 'file_name'") from None
        position = {int(i): k for k, i in enumerate(self.image_ids)}
        self.png_names: list[str | None] = [None] * len(images)
        self.segments: list[list[tuple[int, int, bool]]] = [[] for _ in images]
        for ann in data["annotations"]:
            try:
                k = position[int(ann["image_id"])]
                self.png_names[k] = str(ann["file_name"])
                rows = []
                for s in ann["segments_info"]:
                    cid = int(s["category_id"])
                    label = self.label_map.label_of(cid)
                    if label is None:
                        raise DataError(f"{path}: image id {ann['image_id']}: segment {s.get('id')} has unknown category_id {cid}")
                    rows.append((int(s["id"]), label, bool(s.get("iscrowd", 0))))
                self.segments[k] = rows
            except KeyError as err:
                raise DataError(f"{path}: panoptic annotation {_short(ann)} is malformed (missing or unknown {err}); it needs image_id, file_name and segments_info") from None
        missing = [int(self.image_ids[k]) for k, n in enumerate(self.png_names) if n is None]
        if missing:
            raise DataError(f"{path}: image ids {missing[:5]} have no panoptic annotation (file_name + segments_info)")

    @classmethod
    def load(cls, annotations_path, images_dir, masks_dir) -> "PanopticIndex":
        return cls(read_json(annotations_path), str(annotations_path), str(images_dir), str(masks_dir))

    @property
    def stuff_labels(self) -> list[int]:
        return [int(i) for i in np.flatnonzero(~self.isthing)]

    def png_path(self, i: int) -> str:
        return os.path.join(self.masks_dir, self.png_names[i])

    def segment_map(self, i: int) -> np.ndarray:
        """(H, W) int64 segment ids of image position i, checked against its segments_info."""
        ids = read_panoptic_png(self.png_path(i))
        if ids.shape != (int(self.heights[i]), int(self.widths[i])) and self.heights[i] > 0:
            raise DataError(f"{self.png_path(i)} is {ids.shape[1]}x{ids.shape[0]} but image id {int(self.image_ids[i])} is {int(self.widths[i])}x{int(self.heights[i])}")
        return ids

    def targets(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Training targets of image position i: masks (N, H, W) uint8 0/1 and labels (N,) int64, one
        per non-crowd segment present in the PNG (crowd and void pixels are in no mask)."""
        ids = self.segment_map(i)
        rows = [(sid, label) for sid, label, crowd in self.segments[i] if not crowd]
        masks = np.stack([(ids == sid) for sid, _ in rows]).astype(np.uint8) if rows else np.zeros((0,) + ids.shape, np.uint8)
        keep = masks.reshape(len(rows), -1).any(1) if rows else np.zeros(0, bool)
        labels = np.array([label for _, label in rows], dtype=np.int64)
        return masks[keep], labels[keep]


def _short(value) -> str:
    text = repr(value)
    return text if len(text) < 80 else text[:77] + "..."


class PanopticDataset(MaskSampleDataset):
    """Samples of a PanopticIndex: one mask per non-crowd segment (things and stuff alike)."""

    def targets(self, i):
        return self.index.targets(i)
