"""The one COCO parser and the one label map: contiguous label ids and their inverse, crowd and
degenerate-box handling.

COCO category ids (which may have gaps, e.g. 1..90) become contiguous labels 0..K-1 in `LabelMap`,
and go back to COCO ids through the same `LabelMap` when results are written. Nowhere else.
"""
from __future__ import annotations

import contextlib
import gc
import json
import os
from typing import Any

import numpy as np

from cvengine.errors import DataError

# Boxes this small (in pixels, after clipping to the image) cannot be learned and are dropped.
MIN_BOX_SIDE = 1.0


@contextlib.contextmanager
def gc_paused():
    """Pause the cycle collector while building millions of small dicts and lists that hold no
    cycles: at COCO train2017 scale it otherwise spends more time walking the heap than the parse."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# Documents parsed by the validator, by (path, size, mtime): inside `parsed_once()` the next
# read_json of the same unchanged file takes the document instead of parsing it again (~1 s per
# 58 MB of COCO json; ~8 s at COCO train2017 size). None outside: nothing is held after start-up.
_handed_over: dict | None = None


def _file_key(path) -> tuple:
    stat = os.stat(path)
    return (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)


@contextlib.contextmanager
def parsed_once():
    """Training start-up: each annotations file the validator parses is parsed once, not twice."""
    global _handed_over
    previous, _handed_over = _handed_over, {}
    try:
        yield
    finally:
        _handed_over = previous


def hand_over(path: str | os.PathLike, document) -> None:
    """Inside `parsed_once()`: give `document`, parsed from `path`, to the next read_json(path)."""
    if _handed_over is not None:
        _handed_over[_file_key(path)] = document


def read_json(path: str | os.PathLike) -> Any:
    if _handed_over:
        try:
            # Taken, not shared: the reader may change its document.
            document = _handed_over.pop(_file_key(path), None)
        except OSError:
            document = None
        if document is not None:
            return document
    try:
        # Text mode: the raw bytes are freed once decoded, so the file is not held twice while parsing.
        with open(path, encoding="utf-8-sig") as fh, gc_paused():
            return json.load(fh)
    except FileNotFoundError:
        raise DataError(f"annotations file not found: {path}") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not valid JSON (not UTF-8: {err.reason})") from None


def _require_list(data: dict, key: str, path) -> list:
    value = data.get(key)
    if not isinstance(value, list):
        raise DataError(f"{path}: top-level '{key}' must be a list (COCO format); got {type(value).__name__}")
    return value


class LabelMap:
    """Contiguous labels 0..K-1 <-> the data set's category ids <-> class names.

    category_ids  (K,) int64, ascending: the category id of each label
    names         K class names, in label order
    categories    K category records (dicts with at least id and name; panoptic ones carry `isthing`)
    Built once per data set (`from_categories`, `from_names`) and saved with a trained model
    (`to_metadata` -> cvengine.json); every mapping between ids goes through it.
    """

    def __init__(self, category_ids, names, categories=None):
        self.category_ids = np.asarray(category_ids, dtype=np.int64).reshape(-1)
        self.names = [str(n) for n in names]
        if len(self.names) != len(self.category_ids):
            raise ValueError(f"{len(self.names)} names for {len(self.category_ids)} category ids")
        self.categories = [dict(c) for c in categories] if categories is not None else [{"id": int(c), "name": n} for c, n in zip(self.category_ids, self.names)]
        self._label_of = {int(c): i for i, c in enumerate(self.category_ids)}

    @classmethod
    def from_categories(cls, categories: list, where: str = "") -> "LabelMap":
        """COCO `categories` records, ordered by id (the contiguous label order)."""
        try:
            ordered = sorted(categories, key=lambda c: int(c["id"]))
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{where}: every category needs an integer 'id'") from None
        ids = [int(c["id"]) for c in ordered]
        if len(set(ids)) != len(ids):
            raise DataError(f"{where}: duplicate category id {_first_duplicate(ids)}")
        return cls(ids, [str(c.get("name", c["id"])) for c in ordered], ordered)

    @classmethod
    def from_names(cls, names: list[str]) -> "LabelMap":
        """Classes known by name only (class folders, label files): category id = label."""
        return cls(np.arange(len(names)), names)

    @classmethod
    def from_metadata(cls, metadata: dict) -> "LabelMap":
        """The label map a trained model folder's cvengine.json holds."""
        names = list(metadata["class_names"])
        ids = metadata.get("label_to_category_id") or list(range(len(names)))
        return cls(ids, names, metadata.get("categories") or None)

    def to_metadata(self) -> dict:
        return {"class_names": list(self.names), "label_to_category_id": [int(c) for c in self.category_ids], "categories": self.categories}

    def __len__(self) -> int:
        return len(self.names)

    def __eq__(self, other) -> bool:
        return isinstance(other, LabelMap) and self.names == other.names and np.array_equal(self.category_ids, other.category_ids)

    def __repr__(self) -> str:
        return f"LabelMap({len(self)} classes: {', '.join(self.names[:5])}{', …' if len(self) > 5 else ''})"

    def category_ids_of(self, labels) -> np.ndarray:
        """(N,) contiguous labels -> (N,) int64 category ids."""
        return self.category_ids[np.asarray(labels, dtype=np.int64)]

    def category_id(self, label: int) -> int:
        return int(self.category_ids[int(label)])

    def label_of(self, category_id: int) -> int | None:
        """The contiguous label of a category id, None for an id the data set does not have."""
        return self._label_of.get(int(category_id))

    def name(self, label: int) -> str:
        return self.names[int(label)] if 0 <= int(label) < len(self.names) else str(int(label))

    @property
    def isthing(self) -> np.ndarray:
        """(K,) bool: thing classes (countable objects); stuff classes (panoptic) are False."""
        return np.array([bool(c.get("isthing", 1)) for c in self.categories], dtype=bool)

    def with_background(self) -> "LabelMap":
        """This map with a "background" class prepended as label 0, category id 0 (semantic label maps
        painted from COCO instances)."""
        return LabelMap(np.concatenate([[0], self.category_ids]), ["background", *self.names], [{"id": 0, "name": "background"}, *self.categories])


class ImageIndex:
    """What every task's index shares, over its `image_ids` (N,), `file_names` (relative to
    `images_dir`) and `label_map`: its length, its classes and each image's path."""

    image_ids: np.ndarray
    file_names: list
    images_dir: str
    label_map: "LabelMap"

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def num_classes(self) -> int:
        return len(self.label_map)

    @property
    def class_names(self) -> list[str]:
        return self.label_map.names

    def image_path(self, i: int) -> str:
        return os.path.join(self.images_dir, self.file_names[i])


class CocoIndex(ImageIndex):
    """Images, categories and per-image targets of one COCO instances file, held as numpy arrays.

    Per image i (position in `image_ids`), its annotations are rows `offsets[i]:offsets[i+1]` of
      boxes_xyxy_abs  (A, 4) float32  absolute pixels, clipped to the image
      labels          (A,)   int64    contiguous 0..K-1
      iscrowd         (A,)   bool
      ann_rows        (A,)   int64    index into the file's annotation list (for masks)
    Degenerate boxes are already removed (counted in `num_degenerate`). Crowd rows stay here so that
    evaluation can treat them as crowd; training targets drop them.
    """

    def __init__(self, data: dict, annotations_path: str, images_dir: str, keep_segmentation: bool = False):
        path = annotations_path
        self.annotations_path = str(annotations_path)
        self.images_dir = str(images_dir)
        if not isinstance(data, dict):
            raise DataError(f"{path}: top level must be a JSON object with images, annotations, categories")
        images = _require_list(data, "images", path)
        annotations = data.get("annotations", [])
        if not isinstance(annotations, list):
            raise DataError(f"{path}: top-level 'annotations' must be a list")
        categories = _require_list(data, "categories", path)

        # Categories -> contiguous labels, ordered by COCO id.
        self.label_map = LabelMap.from_categories(categories, path)

        # Images.
        try:
            self.image_ids = np.array([int(im["id"]) for im in images], dtype=np.int64)
            self.file_names = [str(im["file_name"]) for im in images]
            self.widths = np.array([int(im.get("width", 0)) for im in images], dtype=np.int64)
            self.heights = np.array([int(im.get("height", 0)) for im in images], dtype=np.int64)
        except (KeyError, TypeError, ValueError) as err:
            bad = next((im for im in images if not isinstance(im, dict) or "id" not in im or "file_name" not in im), None)
            raise DataError(f"{path}: image record {bad!r} needs 'id' and 'file_name' ({err})") from None
        missing_size = np.flatnonzero((self.widths <= 0) | (self.heights <= 0))
        for i in missing_size:
            # width/height are optional in some exporters: take them from the file header (no decode).
            self.heights[i], self.widths[i] = _image_header_size(os.path.join(self.images_dir, self.file_names[i]), path, int(self.image_ids[i]))
        if len(np.unique(self.image_ids)) != len(self.image_ids):
            raise DataError(f"{path}: duplicate image id {_first_duplicate(self.image_ids.tolist())}")
        order = np.argsort(self.image_ids, kind="stable")
        sorted_ids = self.image_ids[order]

        # Annotations, vectorised: one pass to pull fields, then numpy for the rest.
        n = len(annotations)
        try:
            ann_image_ids = np.fromiter((a["image_id"] for a in annotations), dtype=np.int64, count=n)
            ann_cat_ids = np.fromiter((a["category_id"] for a in annotations), dtype=np.int64, count=n)
            ann_crowd = np.fromiter((a.get("iscrowd", 0) for a in annotations), dtype=bool, count=n)
            flat = np.fromiter((v for a in annotations for v in _bbox_of(a)), dtype=np.float64, count=4 * n)
        except (KeyError, TypeError, ValueError, _BadBox) as err:
            bad = _first_bad_annotation(annotations)
            raise DataError(f"{path}: annotation {bad} is malformed ({err}); it needs image_id, category_id and bbox [x, y, w, h]") from None
        xywh = flat.reshape(n, 4)

        pos = np.searchsorted(sorted_ids, ann_image_ids)
        pos = np.clip(pos, 0, max(len(sorted_ids) - 1, 0))
        known_image = (sorted_ids[pos] == ann_image_ids) if len(sorted_ids) else np.zeros(n, bool)
        if not known_image.all():
            i = int(np.flatnonzero(~known_image)[0])
            raise DataError(f"{path}: annotation id {annotations[i].get('id')} refers to unknown image_id {int(ann_image_ids[i])}")
        image_index = order[pos]

        category_ids = self.label_map.category_ids  # ascending
        cpos = np.clip(np.searchsorted(category_ids, ann_cat_ids), 0, max(len(category_ids) - 1, 0))
        known_cat = (category_ids[cpos] == ann_cat_ids) if len(category_ids) else np.zeros(n, bool)
        if not known_cat.all():
            i = int(np.flatnonzero(~known_cat)[0])
            raise DataError(
                f"{path}: annotation id {annotations[i].get('id')} has unknown category_id {int(ann_cat_ids[i])}"
                f" (known: {category_ids.tolist()})"
            )
        labels = cpos.astype(np.int64)

        # xywh -> xyxy, clipped to the image; drop boxes that collapse.
        w_img = self.widths[image_index].astype(np.float64)
        h_img = self.heights[image_index].astype(np.float64)
        x0 = np.clip(xywh[:, 0], 0, w_img)
        y0 = np.clip(xywh[:, 1], 0, h_img)
        x1 = np.clip(xywh[:, 0] + xywh[:, 2], 0, w_img)
        y1 = np.clip(xywh[:, 1] + xywh[:, 3], 0, h_img)
        keep = ((x1 - x0) > MIN_BOX_SIDE) & ((y1 - y0) > MIN_BOX_SIDE)
        # Crowd regions are kept whatever their size: the evaluator needs them to ignore detections.
        keep |= ann_crowd
        self.num_degenerate = int((~keep).sum())

        rows = np.flatnonzero(keep)
        by_image = np.argsort(image_index[rows], kind="stable")
        rows = rows[by_image]
        self.boxes_xyxy_abs = np.stack([x0, y0, x1, y1], axis=1)[rows].astype(np.float32)
        self.labels = labels[rows]
        self.iscrowd = ann_crowd[rows]
        self.ann_rows = rows.astype(np.int64)
        counts = np.bincount(image_index[rows], minlength=len(images))
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        # Masks are decoded lazily from these (polygons / RLE) by the segmentation tasks.
        self.segmentations = [annotations[r].get("segmentation") for r in rows] if keep_segmentation else None

    @classmethod
    def load(cls, annotations_path: str | os.PathLike, images_dir: str | os.PathLike, keep_segmentation: bool = False) -> "CocoIndex":
        data = read_json(annotations_path)
        with gc_paused():
            return cls(data, str(annotations_path), str(images_dir), keep_segmentation=keep_segmentation)

    def coco(self):
        """The pycocotools ground truth of the annotations file (crowd regions included), built once
        and kept: evaluation after every epoch re-uses it."""
        if getattr(self, "_coco", None) is None:
            from cvengine.metrics.coco import coco_from_dict

            self._coco = coco_from_dict(read_json(self.annotations_path), source=self.annotations_path)
        return self._coco

    def __getstate__(self) -> dict:
        # Loader workers get the index through the dataset; the evaluation ground truth stays here.
        return {k: v for k, v in self.__dict__.items() if k != "_coco"}

    def targets(self, i: int, include_crowd: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Boxes (A, 4) float32 xyxy absolute and labels (A,) int64 of image position i."""
        s, e = self.offsets[i], self.offsets[i + 1]
        boxes, labels = self.boxes_xyxy_abs[s:e], self.labels[s:e]
        if not include_crowd:
            keep = ~self.iscrowd[s:e]
            boxes, labels = boxes[keep], labels[keep]
        return boxes, labels

    def masks(self, i: int, include_crowd: bool = False) -> np.ndarray:
        """(A, H, W) uint8 0/1 masks of image position i, decoded now from the kept segmentations,
        in the order of `targets(i, include_crowd)`. Needs `keep_segmentation=True`."""
        from cvengine.data.masks import segmentation_to_rle

        if self.segmentations is None:
            raise ValueError("CocoIndex was loaded without keep_segmentation=True")
        s, e = int(self.offsets[i]), int(self.offsets[i + 1])
        h, w = int(self.heights[i]), int(self.widths[i])
        rles = []
        for row in range(s, e):
            seg = self.segmentations[row]
            where = f"{self.annotations_path}: annotation at row {int(self.ann_rows[row])} (image id {int(self.image_ids[i])})"
            if seg is None:
                raise DataError(f"{where} has no 'segmentation'")
            try:
                rles.append(segmentation_to_rle(seg, h, w))
            except (ValueError, TypeError) as err:
                raise DataError(f"{where}: broken segmentation: {err}; run python -m cvengine.data check") from None
        from pycocotools import mask as mask_utils

        # (H, W, A) Fortran order -> (A, H, W) C order, without a copy.
        out = mask_utils.decode(rles).transpose(2, 0, 1) if rles else np.zeros((0, h, w), dtype=np.uint8)
        if not include_crowd:
            out = out[~self.iscrowd[s:e]]
        return out


def _image_header_size(image_path: str, annotations_path, image_id: int) -> tuple[int, int]:
    """(height, width) as the model will see the image (EXIF orientation applied), from the header."""
    from PIL import Image

    try:
        with Image.open(image_path) as image:
            w, h = image.size
            if image.getexif().get(0x0112) in (5, 6, 7, 8):  # rotated by 90 degrees when shown
                w, h = h, w
            return h, w
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{annotations_path}: image id {image_id} has no width/height and {image_path} cannot be read: {err}") from None


class _BadBox(Exception):
    pass


def _bbox_of(annotation: dict):
    box = annotation["bbox"]
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        raise _BadBox(f"bbox {box!r} is not [x, y, w, h]")
    return box


def _first_bad_annotation(annotations: list) -> str:
    for a in annotations:
        try:
            int(a["image_id"]), int(a["category_id"])
            [float(v) for v in _bbox_of(a)]
            int(a.get("iscrowd", 0))
        except Exception:
            return f"id {a.get('id') if isinstance(a, dict) else '?'}"
    return "?"


def _first_duplicate(values: list):
    seen = set()
    for v in values:
        if v in seen:
            return v
        seen.add(v)
    return None
