"""COCO segmentations (polygons, uncompressed or compressed RLE) -> binary masks, with pycocotools.

The one place where COCO `segmentation` fields are decoded; every task that needs a mask calls
`decode_segmentation`.
"""
from __future__ import annotations

import numpy as np

from cvengine.errors import DataError


def _mask_utils():
    try:
        from pycocotools import mask as mask_utils
    except ImportError:  # pragma: no cover - pycocotools is a core dependency
        raise DataError("decoding COCO masks needs pycocotools: pip install pycocotools") from None
    return mask_utils


def segmentation_to_rle(segmentation, height: int, width: int) -> dict:
    """One compressed RLE (pycocotools dict, `counts` bytes) of a COCO segmentation of an image of
    `height` x `width`: polygons are rasterised and merged, uncompressed RLE is compressed."""
    mask_utils = _mask_utils()
    if isinstance(segmentation, list):
        if not segmentation:
            return mask_utils.encode(np.zeros((height, width, 1), dtype=np.uint8, order="F"))[0]
        # frPyObjects wants every polygon as a flat list of at least 6 numbers.
        polygons = [[float(v) for v in poly] for poly in segmentation]
        if any(len(p) < 6 or len(p) % 2 for p in polygons):
            raise ValueError("a polygon needs an even number of coordinates, at least 6")
        return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    if isinstance(segmentation, dict):
        size = segmentation.get("size")
        counts = segmentation.get("counts")
        if not (isinstance(size, (list, tuple)) and len(size) == 2):
            raise ValueError(f"RLE size {size!r} is not [height, width]")
        if [int(size[0]), int(size[1])] != [height, width]:
            raise ValueError(f"RLE size {list(size)} differs from the image's [height, width] [{height}, {width}]")
        if isinstance(counts, list):
            return mask_utils.frPyObjects(segmentation, height, width)
        if isinstance(counts, str):
            return {"size": [height, width], "counts": counts.encode("ascii")}
        if isinstance(counts, bytes):
            return {"size": [height, width], "counts": counts}
        raise ValueError("RLE counts must be a string or a list of integers")
    raise ValueError(f"segmentation must be a list of polygons or an RLE object, got {type(segmentation).__name__}")


def decode_segmentation(segmentation, height: int, width: int) -> np.ndarray:
    """A COCO `segmentation` (polygons or RLE) -> (height, width) uint8 mask of 0 and 1.

    Raises ValueError (with the reason) for a segmentation pycocotools cannot decode; callers that
    know the file and record turn it into a DataError naming them.
    """
    mask_utils = _mask_utils()
    rle = segmentation_to_rle(segmentation, int(height), int(width))
    mask = mask_utils.decode(rle)
    if mask.shape != (height, width):
        raise ValueError(f"decoded mask is {mask.shape[0]}x{mask.shape[1]}, image is {height}x{width}")
    return mask


def encode_mask(mask: np.ndarray) -> dict:
    """(H, W) 0/1 mask -> COCO compressed RLE with `counts` as text (JSON-ready)."""
    rle = _mask_utils().encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


# ----------------------------------------------------------------------------------------------------
# Semantic label maps: (H, W) uint8 of contiguous labels, IGNORE where neither the loss nor the metrics
# look (crowd regions, the data set's ignore value).

IGNORE = 255


def paint_semantic_map(segmentations: list, labels, iscrowd, height: int, width: int, background: int = 0, where: str = "") -> np.ndarray:
    """Instances of one image -> (H, W) uint8 label map.

    Deterministic whatever the file's annotation order: pixels start as `background`; crowd regions
    become IGNORE; then instances are painted from the largest mask area to the smallest, so that
    where instances overlap the smaller one wins (a cup on a table stays a cup). Equal areas keep
    the file's order. `where` names the image in errors.
    """
    semantic = np.full((height, width), background, dtype=np.uint8)
    masks = []
    for k, segmentation in enumerate(segmentations):
        try:
            masks.append(decode_segmentation(segmentation, height, width).astype(bool))
        except ValueError as err:
            raise DataError(f"{where}: instance {k} ({'crowd' if iscrowd[k] else 'label ' + str(int(labels[k]))}): {err}") from None
    for k, mask in enumerate(masks):
        if iscrowd[k]:
            semantic[mask] = IGNORE
    areas = np.array([int(m.sum()) for m in masks], dtype=np.int64)
    for k in np.argsort(-areas, kind="stable"):
        if not iscrowd[k]:
            semantic[masks[k]] = int(labels[k])
    return semantic


def read_label_png(path: str) -> np.ndarray:
    """A single-channel label PNG (mode L, P or 16-bit) -> (H, W) int64 of the stored values.

    Palette PNGs (ADE20K, Pascal VOC) store label ids as palette indices: the indices are read, not
    the colours. Colour masks are refused with an error naming the file.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.mode in ("RGB", "RGBA", "LA", "CMYK"):
                raise DataError(f"mask {path} is a {image.mode} colour image; masks must hold one label id per pixel (PNG mode L, P or I;16)")
            return np.asarray(image).astype(np.int64)
    except FileNotFoundError:
        raise DataError(f"mask not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"cannot read mask {path}: {err}") from None


def remap_png_labels(values: np.ndarray, num_classes: int, ignore_index: int, reduce_labels: bool, path: str) -> np.ndarray:
    """Stored PNG values (H, W) int64 -> contiguous labels (H, W) uint8 with IGNORE.

    ignore_index: the stored value meaning "not labelled" (255 in most data sets).
    reduce_labels (ADE20K): stored 0 is "other" -> IGNORE, and every other value v -> v - 1.
    A value outside the label map is an error naming the file.
    """
    ignore = values == ignore_index
    if reduce_labels:
        ignore |= values == 0
        values = values - 1
    bad = ~ignore & ((values < 0) | (values >= num_classes))
    if bad.any():
        shift = 1 if reduce_labels else 0
        found = (np.unique(values[bad]) + shift)[:5].tolist()
        raise DataError(
            f"mask {path}: values {found} are outside 0..{num_classes - 1 + shift} ({num_classes} classes in data.labels"
            f"{', reduce_labels' if reduce_labels else ''}) and are not data.ignore_index = {ignore_index}"
        )
    out = values.astype(np.uint8)
    out[ignore] = IGNORE
    return out
