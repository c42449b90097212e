"""COCO panoptic data: a json (images, annotations with `segments_info`, categories with `isthing`)
plus a folder of PNGs whose RGB colour encodes the segment id (id = R + 256 G + 256² B, 0 = void).

    PanopticIndex       the parsed json: contiguous labels 0..K-1 ordered by category id (and back),
                        per image its PNG name and segments
    instances_to_panoptic  a COCO instances file (+ stuff classes) -> panoptic json + PNGs
"""
from __future__ import annotations

import os

import numpy as np

from cvengine.data.coco import read_json
from cvengine.errors import DataError
from cvengine.metrics.panoptic import id_to_rgb, read_panoptic_png


class PanopticIndex:
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
        try:
            categories = sorted(data["categories"], key=lambda c: int(c["id"]))
            self.label_to_category_id = np.array([int(c["id"]) for c in categories], dtype=np.int64)
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{path}: every category needs an integer 'id'") from None
        if len(set(self.label_to_category_id.tolist())) != len(categories):
            raise DataError(f"{path}: duplicate category id")
        self.categories = categories
        self.category_id_to_label = {int(c): i for i, c in enumerate(self.label_to_category_id)}
        self.class_names = [str(c.get("name", c["id"])) for c in categories]
        self.isthing = np.array([bool(c.get("isthing", 1)) for c in categories], dtype=bool)

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
                    if cid not in self.category_id_to_label:
                        raise DataError(f"{path}: image id {ann['image_id']}: segment {s.get('id')} has unknown category_id {cid}")
                    rows.append((int(s["id"]), self.category_id_to_label[cid], bool(s.get("iscrowd", 0))))
                self.segments[k] = rows
            except KeyError as err:
                raise DataError(f"{path}: panoptic annotation {_short(ann)} is malformed (missing or unknown {err}); it needs image_id, file_name and segments_info") from None
        missing = [int(self.image_ids[k]) for k, n in enumerate(self.png_names) if n is None]
        if missing:
            raise DataError(f"{path}: image ids {missing[:5]} have no panoptic annotation (file_name + segments_info)")

    @classmethod
    def load(cls, annotations_path, images_dir, masks_dir) -> "PanopticIndex":
        return cls(read_json(annotations_path), str(annotations_path), str(images_dir), str(masks_dir))

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    @property
    def stuff_labels(self) -> list[int]:
        return [int(i) for i in np.flatnonzero(~self.isthing)]

    def image_path(self, i: int) -> str:
        return os.path.join(self.images_dir, self.file_names[i])

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


def instances_to_panoptic(
    instances_json: str | os.PathLike,
    out_json: str | os.PathLike,
    out_png_dir: str | os.PathLike,
    stuff: list[str] | None = None,
) -> dict:
    """A COCO instances file -> COCO panoptic json + PNGs.

    Every instance becomes a thing segment (crowd instances become crowd segments); where instances
    overlap the smaller one wins. `stuff` names stuff classes: the first one ("background") fills
    every pixel no instance covers; with no stuff class those pixels are void. Stuff categories get
    ids after the largest thing id. Returns {"annotations": out_json, "masks": out_png_dir, "num_images"}.
    """
    from PIL import Image

    from cvengine.data.masks import decode_segmentation

    data = read_json(instances_json)
    stuff = list(stuff or [])
    things = [{**c, "isthing": 1} for c in data["categories"]]
    next_id = max((int(c["id"]) for c in things), default=0) + 1
    stuff_categories = [{"id": next_id + k, "name": name, "supercategory": "stuff", "isthing": 0} for k, name in enumerate(stuff)]
    os.makedirs(out_png_dir, exist_ok=True)
    by_image: dict[int, list] = {}
    for ann in data["annotations"]:
        by_image.setdefault(int(ann["image_id"]), []).append(ann)
    annotations = []
    for im in data["images"]:
        h, w = int(im["height"]), int(im["width"])
        ids = np.zeros((h, w), dtype=np.int64)
        segments = []
        anns = by_image.get(int(im["id"]), [])
        masks = []
        for ann in anns:
            try:
                masks.append(decode_segmentation(ann["segmentation"], h, w).astype(bool))
            except (KeyError, ValueError) as err:
                raise DataError(f"{instances_json}: annotation id {ann.get('id')}: cannot decode its segmentation ({err})") from None
        order = np.argsort([-int(m.sum()) for m in masks], kind="stable")
        for k in order:
            ann, mask = anns[k], masks[k]
            segment_id = len(segments) + 1
            ids[mask] = segment_id
            segments.append({"id": segment_id, "category_id": int(ann["category_id"]), "iscrowd": int(ann.get("iscrowd", 0))})
        if stuff_categories:
            segment_id = len(segments) + 1
            ids[ids == 0] = segment_id
            segments.append({"id": segment_id, "category_id": stuff_categories[0]["id"], "iscrowd": 0})
        # Areas and boxes from the final map (smaller instances may cover parts of larger ones).
        present = []
        for s in segments:
            mask = ids == s["id"]
            area = int(mask.sum())
            if area == 0:
                continue
            ys, xs = np.nonzero(mask)
            s["area"] = area
            s["bbox"] = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
            present.append(s)
        png_name = os.path.splitext(str(im["file_name"]))[0] + ".png"
        os.makedirs(os.path.dirname(os.path.join(out_png_dir, png_name)) or ".", exist_ok=True)
        Image.fromarray(id_to_rgb(ids)).save(os.path.join(out_png_dir, png_name))
        annotations.append({"image_id": int(im["id"]), "file_name": png_name, "segments_info": present})
    out = {
        "info": data.get("info", {}),
        "images": data["images"],
        "annotations": annotations,
        "categories": things + stuff_categories,
    }
    tmp = f"{out_json}.tmp"
    import json

    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(out, fh, separators=(",", ":"))
    os.replace(tmp, out_json)
    return {"annotations": str(out_json), "masks": str(out_png_dir), "num_images": len(annotations)}
