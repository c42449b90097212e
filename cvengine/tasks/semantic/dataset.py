"""Semantic segmentation data: COCO instance annotations painted into label maps, or image + PNG mask
folders (ADE20K / Cityscapes layout), both as one index type yielding (H, W) uint8 label maps with
IGNORE (255) on unlabelled pixels.

COCO: label 0 is "background" (every pixel no instance covers) and category k (in COCO id order) is
label k + 1, unless the file has a category named "background", which then takes that role and no
class is added. Crowd regions are IGNORE; overlapping instances: see `paint_semantic_map`.
PNG masks: `<masks>/<image path relative to images, extension .png>` holds label ids; class names
come from data.labels; data.ignore_index and data.reduce_labels say how stored values map to labels.
"""
from __future__ import annotations

import os

import numpy as np

from cvengine.data.coco import CocoIndex, ImageIndex, LabelMap, read_json
from cvengine.data.dataset import Sample, SampleDataset
from cvengine.data.images import IMAGE_EXTENSIONS
from cvengine.data.masks import BACKGROUND, IGNORE, paint_semantic_map, read_label_png, remap_png_labels
from cvengine.errors import DataError



class SemanticIndex(ImageIndex):
    """image_ids (N,), file_names (relative to images_dir), class_names, and `semantic_map(i)`: the
    ORIGINAL-size (H, W) uint8 label map of image position i."""

    def __init__(self, images_dir: str, annotations_path: str, label_map: LabelMap, image_ids: np.ndarray, file_names: list[str],
                 heights: np.ndarray | None = None, widths: np.ndarray | None = None):
        self.images_dir = images_dir
        self.annotations_path = annotations_path
        self.label_map = label_map
        self.image_ids = image_ids
        self.file_names = file_names
        # Record sizes (COCO layout), checked against the decoded file; 0 where unknown (mask folders).
        self.heights = heights if heights is not None else np.zeros(len(image_ids), np.int64)
        self.widths = widths if widths is not None else np.zeros(len(image_ids), np.int64)
        self._position = {int(iid): i for i, iid in enumerate(image_ids)}
        if len(label_map) >= IGNORE:
            raise DataError(f"{annotations_path}: {len(label_map)} classes; label maps hold at most {IGNORE} (255 marks ignored pixels)")

    def position(self, image_id: int) -> int:
        return self._position[int(image_id)]

    def semantic_map(self, i: int) -> np.ndarray:
        raise NotImplementedError


class CocoSemanticIndex(SemanticIndex):
    def __init__(self, coco: CocoIndex, annotation_ids: list | None = None):
        """`coco` loaded with keep_segmentation=True; annotation_ids (the file's 'id' per row of
        coco.ann_rows) name records in errors."""
        self.coco = coco
        self._ann_ids = annotation_ids
        names = list(coco.class_names)
        lowered = [n.lower() for n in names]
        if BACKGROUND in lowered:
            # The file's own background category takes label 0's role; labels keep COCO id order.
            self.background, self.shift, label_map = lowered.index(BACKGROUND), 0, coco.label_map
        else:
            if coco.label_map.label_of(0) is not None:
                raise DataError(f"{coco.annotations_path}: category id 0 ('{names[0]}') would collide with the background class cvengine adds as label 0 (category id 0); renumber the categories from 1, or name that category 'background'")
            self.background, self.shift, label_map = 0, 1, coco.label_map.with_background()
        super().__init__(coco.images_dir, coco.annotations_path, label_map, coco.image_ids, coco.file_names, coco.heights, coco.widths)
        self._validate()

    def _validate(self) -> None:
        """What the JSON alone shows to be wrong, before any training: missing segmentations and
        RLE sizes that are not the image's."""
        coco = self.coco
        for i in range(len(coco)):
            h, w = int(coco.heights[i]), int(coco.widths[i])
            if h <= 0 or w <= 0:
                raise DataError(f"{coco.annotations_path}: image id {int(coco.image_ids[i])} ({coco.file_names[i]}) needs positive 'width' and 'height'")
            for row in range(coco.offsets[i], coco.offsets[i + 1]):
                seg = coco.segmentations[row]
                record = f"{coco.annotations_path}: annotation id {self._annotation_id(row)} (image {coco.file_names[i]})"
                if seg is None:
                    raise DataError(f"{record}: has no 'segmentation'; semantic segmentation needs a mask (polygons or RLE) per annotation")
                if isinstance(seg, dict) and isinstance(seg.get("size"), list) and [int(v) for v in seg["size"]] != [h, w]:
                    raise DataError(f"{record}: RLE size {seg['size']} differs from the image's [height, width] [{h}, {w}]")

    def _annotation_id(self, row: int):
        return self._ann_ids[row] if self._ann_ids is not None else f"#{int(self.coco.ann_rows[row])}"

    def semantic_map(self, i: int) -> np.ndarray:
        coco = self.coco
        s, e = coco.offsets[i], coco.offsets[i + 1]
        labels = coco.labels[s:e] + self.shift
        where = f"{coco.annotations_path}: image id {int(coco.image_ids[i])} ({coco.file_names[i]})"
        return paint_semantic_map(coco.segmentations[s:e], labels, coco.iscrowd[s:e], int(coco.heights[i]), int(coco.widths[i]), self.background, where)

    @classmethod
    def load(cls, annotations_path: str, images_dir: str) -> "CocoSemanticIndex":
        data = read_json(annotations_path)
        coco = CocoIndex(data, annotations_path, images_dir, keep_segmentation=True)
        annotations = data["annotations"]
        return cls(coco, [annotations[int(r)].get("id", f"#{int(r)}") for r in coco.ann_rows])


class MaskFolderIndex(SemanticIndex):
    def __init__(self, images_dir: str, masks_dir: str, class_names: list[str], ignore_index: int, reduce_labels: bool):
        if not os.path.isdir(images_dir):
            raise DataError(f"images folder not found: {images_dir}")
        if not os.path.isdir(masks_dir):
            raise DataError(f"masks folder not found: {masks_dir}")
        file_names = []
        for root, dirs, files in os.walk(images_dir):
            dirs.sort()
            for name in sorted(files):
                if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                    file_names.append(os.path.relpath(os.path.join(root, name), images_dir))
        if not file_names:
            raise DataError(f"{images_dir}: no images ({', '.join(IMAGE_EXTENSIONS)})")
        self.masks_dir = masks_dir
        self.ignore_index = ignore_index
        self.reduce_labels = reduce_labels
        for f in file_names:
            _check_mask_header(os.path.join(images_dir, f), self.mask_path_of(f))
        super().__init__(images_dir, masks_dir, LabelMap.from_names(class_names), np.arange(1, len(file_names) + 1, dtype=np.int64), file_names)

    def mask_path_of(self, file_name: str) -> str:
        return os.path.join(self.masks_dir, os.path.splitext(file_name)[0] + ".png")

    def mask_path(self, i: int) -> str:
        return self.mask_path_of(self.file_names[i])

    def semantic_map(self, i: int) -> np.ndarray:
        path = self.mask_path(i)
        return remap_png_labels(read_label_png(path), self.num_classes, self.ignore_index, self.reduce_labels, path)


def _check_mask_header(image_path: str, mask_path: str) -> None:
    """Before any training: the mask exists, is a readable single-channel image, and has the image's
    size. Headers only (no pixel decoding), a fraction of a millisecond per pair."""
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(mask_path):
        raise DataError(f"{mask_path}: no mask for image {image_path} (masks are <masks>/<image path without extension>.png)")
    try:
        with Image.open(mask_path) as mask:
            mask_size, mode = mask.size, mask.mode
        with Image.open(image_path) as image:
            # EXIF orientations 5-8 swap width and height when the image is read (read_image).
            image_size = image.size[::-1] if image.getexif().get(0x0112, 1) in (5, 6, 7, 8) else image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"cannot read {mask_path} or its image {image_path}: {err}") from None
    if mode in ("RGB", "RGBA", "LA", "CMYK"):
        raise DataError(f"mask {mask_path} is a {mode} colour image; masks must hold one label id per pixel (PNG mode L, P or I;16)")
    if mask_size != image_size:
        raise DataError(f"mask {mask_path} is {mask_size[0]}x{mask_size[1]} but image {image_path} is {image_size[0]}x{image_size[1]} (width x height)")


class SemanticDataset(SampleDataset):
    """Samples with `semantic_map` (H, W) uint8 at the resized size; augmentation moves the map with
    the image (Albumentations' `mask`), resizing uses NEAREST for the map."""

    def __getitem__(self, i: int) -> Sample:
        path = self.index.image_path(i)
        image = self.read_checked(i)
        semantic = self.index.semantic_map(i)
        if semantic.shape != image.shape[:2]:
            source = self.index.mask_path(i) if isinstance(self.index, MaskFolderIndex) else f"{self.index.annotations_path} (record width/height)"
            raise DataError(f"{source}: mask is {semantic.shape[1]}x{semantic.shape[0]} but image {path} is {image.shape[1]}x{image.shape[0]} (width x height)")
        orig_size = image.shape[:2]
        if self.augment is not None:
            out = self.augment_sample(i, image=image, mask=semantic)
            image, semantic = out["image"], out["mask"]
        if self.resize is not None:
            image, _, maps = self.resize(image, None, semantic[None])
            semantic = maps[0]
        return Sample(
            image=np.ascontiguousarray(image),
            image_id=int(self.index.image_ids[i]),
            orig_size=tuple(int(v) for v in orig_size),
            boxes_xyxy_abs=np.zeros((0, 4), np.float32),
            labels=np.zeros((0,), np.int64),
            file_name=self.index.file_names[i],
            semantic_map=semantic,
        )
