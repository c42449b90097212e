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
