"""Image classification data: a COCO file whose annotations give each image's class(es), or the
ImageFolder layout (`images/<class name>/<file>`), both as one index type.

Single-label: every annotation of an image has the same category (the image's class). Multi-label:
every category annotated in an image is one of its targets; an image without annotations has none.
ImageFolder class order is the sorted folder names, with category ids 0..K-1.
"""
from __future__ import annotations

import os

import numpy as np

from cvengine.data.coco import CocoIndex, ImageIndex, LabelMap, read_json
from cvengine.data.dataset import Sample, SampleDataset
from cvengine.data.images import IMAGE_EXTENSIONS, image_folder_classes
from cvengine.errors import DataError


class ClassificationIndex(ImageIndex):
    """image_ids (N,), file_names (paths relative to images_dir), and per image its labels:
    `labels_of(i)` (L,) int64 contiguous labels (exactly one for single-label data)."""

    def __init__(self, images_dir: str, annotations_path: str, label_map: LabelMap,
                 image_ids: np.ndarray, file_names: list[str], labels: list[np.ndarray], multi_label: bool,
                 heights: np.ndarray | None = None, widths: np.ndarray | None = None):
        self.images_dir = images_dir
        self.annotations_path = annotations_path
        self.label_map = label_map
        # Record sizes (COCO layout), checked against the decoded file; 0 where unknown (ImageFolder).
        self.heights = heights if heights is not None else np.zeros(len(image_ids), np.int64)
        self.widths = widths if widths is not None else np.zeros(len(image_ids), np.int64)
        self.image_ids = image_ids
        self.file_names = file_names
        self.labels = labels
        self.multi_label = multi_label
        self._position = {int(iid): i for i, iid in enumerate(image_ids)}

    def position(self, image_id: int) -> int:
        return self._position[int(image_id)]

    def labels_of(self, i: int) -> np.ndarray:
        return self.labels[i]

    # ------------------------------------------------------------------------------------------------
    @classmethod
    def from_coco(cls, annotations_path: str, images_dir: str, multi_label: bool = False) -> "ClassificationIndex":
        """Images and categories through CocoIndex (the one COCO parser); annotations need only
        image_id and category_id (a bbox, when present, is not used)."""
        data = read_json(annotations_path)
        if not isinstance(data, dict):
            raise DataError(f"{annotations_path}: top level must be a JSON object with images, annotations, categories")
        annotations = data.get("annotations", [])
        if not isinstance(annotations, list):
            raise DataError(f"{annotations_path}: top-level 'annotations' must be a list")
        coco = CocoIndex({**data, "annotations": []}, annotations_path, images_dir)
        position = {int(iid): i for i, iid in enumerate(coco.image_ids)}
        per_image: list[list[int]] = [[] for _ in range(len(coco))]
        for k, ann in enumerate(annotations):
            record = f"annotation id {ann.get('id', '#' + str(k))}" if isinstance(ann, dict) else f"annotation #{k}"
            try:
                image_id, category_id = int(ann["image_id"]), int(ann["category_id"])
            except (KeyError, TypeError, ValueError):
                raise DataError(f"{annotations_path}: {record} needs an integer image_id and category_id") from None
            if image_id not in position:
                raise DataError(f"{annotations_path}: {record} refers to unknown image_id {image_id}")
            label = coco.label_map.label_of(category_id)
            if label is None:
                raise DataError(f"{annotations_path}: {record} has unknown category_id {category_id} (known: {coco.label_map.category_ids.tolist()})")
            per_image[position[image_id]].append(label)
        labels = []
        for i, found in enumerate(per_image):
            unique = np.unique(np.asarray(found, dtype=np.int64))
            if not multi_label:
                record = f"image id {int(coco.image_ids[i])} ({coco.file_names[i]})"
                if len(unique) == 0:
                    raise DataError(f"{annotations_path}: {record} has no annotation, so no class; annotate it or remove it")
                if len(unique) > 1:
                    names = [coco.class_names[j] for j in unique]
                    raise DataError(f"{annotations_path}: {record} has annotations of several classes {names}; set model.multi_label = true for multi-label data")
            labels.append(unique)
        return cls(images_dir, annotations_path, coco.label_map, coco.image_ids, coco.file_names, labels, multi_label, coco.heights, coco.widths)

    @classmethod
    def from_folders(cls, images_dir: str, class_names: list[str] | None = None, where: str = "") -> "ClassificationIndex":
        """`images_dir/<class>/<file>`; `class_names` (the train split's) fixes the class order of
        another split, whose folders must all be among them."""
        where = where or images_dir
        found = image_folder_classes(images_dir, where)
        if class_names is None:
            class_names = found
        else:
            unknown = [c for c in found if c not in class_names]
            if unknown:
                raise DataError(f"{where} ({images_dir}): class folder '{unknown[0]}' is not among the train classes ({', '.join(class_names)}); every split needs the train split's classes")
        file_names, labels = [], []
        for label, name in enumerate(class_names):
            folder = os.path.join(images_dir, name)
            if not os.path.isdir(folder):
                continue
            for entry in sorted(os.listdir(folder)):
                if entry.lower().endswith(IMAGE_EXTENSIONS) and not entry.startswith("."):
                    file_names.append(os.path.join(name, entry))
                    labels.append(np.array([label], dtype=np.int64))
        if not file_names:
            raise DataError(f"{where} ({images_dir}): no images ({', '.join(IMAGE_EXTENSIONS)}) in its class folders")
        image_ids = np.arange(1, len(file_names) + 1, dtype=np.int64)
        return cls(images_dir, images_dir, LabelMap.from_names(list(class_names)), image_ids, file_names, labels, False)


class ClassificationDataset(SampleDataset):
    """Samples with `class_label` (single-label) and `labels` (every target label). Augmentation is
    seeded per (seed, epoch, index) like the detection dataset's."""

    def __getitem__(self, i: int) -> Sample:
        image = self.read_checked(i)
        orig_size = image.shape[:2]
        if self.augment is not None:
            image = self.augment_sample(i, image=image)["image"]
        if self.resize is not None:
            image, _, _ = self.resize(image)
        labels = self.index.labels_of(i)
        return Sample(
            image=np.ascontiguousarray(image),
            image_id=int(self.index.image_ids[i]),
            orig_size=tuple(int(v) for v in orig_size),
            boxes_xyxy_abs=np.zeros((0, 4), np.float32),
            labels=labels,
            file_name=self.index.file_names[i],
            class_label=None if self.index.multi_label else int(labels[0]),
        )
