"""Augmentation (Albumentations, train split only) and the fast resize/normalize path.

Hugging Face image processors run at a tenth to a half of JPEG-decode speed, so the hot path takes
mean, std and size FROM the processor and does the work itself: cv2 resize in the loader workers,
uint8 padding in collate, and rescale + normalize as one fused op on the device.
"""
from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch

from cvengine.errors import RecipeError


def build_augment(transforms: list[dict], enabled: bool, with_boxes: bool, with_masks: bool = False):
    """An `A.Compose` from `[{name = "HorizontalFlip", p = 0.5}, …]`, or None when switched off.

    Boxes are `pascal_voc` (xyxy absolute) with their labels in `labels`, so that a box leaving the
    image is dropped together with its label.
    """
    if not enabled or not transforms:
        return None
    import albumentations as A

    steps = []
    for i, spec in enumerate(transforms):
        key = f"augment.transforms[{i}]"
        if not isinstance(spec, dict) or "name" not in spec:
            raise RecipeError(f"{key} must be a table with a 'name', e.g. {{name = \"HorizontalFlip\", p = 0.5}}")
        kwargs = {k: v for k, v in spec.items() if k != "name"}
        cls = getattr(A, str(spec["name"]), None)
        if cls is None or not isinstance(cls, type):
            raise RecipeError(f"{key}: '{spec['name']}' is not an Albumentations transform")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                steps.append(cls(**kwargs))
            except Exception as err:  # albumentations validates arguments with pydantic
                detail = " ".join(line.strip() for line in str(err).splitlines()[:3])
                raise RecipeError(f"{key} ({spec['name']}): {detail}") from None
        # Albumentations only warns about unknown arguments; a typo in a recipe must not pass silently.
        for w in caught:
            if "are not valid for transform" in str(w.message):
                raise RecipeError(f"{key} ({spec['name']}): {w.message}")
    bbox_params = None
    if with_boxes:
        # Boxes are filtered once at the end rather than after every step: same result for the
        # shape-only transforms of a pipeline, a third of the box-handling time.
        bbox_params = A.BboxParams(format="pascal_voc", label_fields=["labels"], min_area=1.0, min_visibility=0.1, clip=True, check_each_transform=False)
    return A.Compose(steps, bbox_params=bbox_params)


def _size_dict(size: Any) -> dict:
    if size is None:
        return {}
    if isinstance(size, (int, float)):
        return {"shortest_edge": int(size)}
    if hasattr(size, "items"):
        return {k: v for k, v in size.items() if v is not None}
    return {k: getattr(size, k) for k in ("height", "width", "shortest_edge", "longest_edge", "max_height", "max_width") if getattr(size, k, None) is not None}


class ResizePolicy:
    """Output (H, W) for an input (H, W), with the semantics of the processor's `size`:
    {height, width} (fixed), {shortest_edge[, longest_edge]} (aspect kept), {max_height, max_width}."""

    def __init__(self, size: dict, defer_upscale: bool = False):
        self.size = dict(size)
        # Upscaling in a loader worker makes every later copy (collate, pinning, host-to-device) bigger;
        # with defer_upscale the worker leaves such images as they are and `resize_on_device` does it.
        self.defer_upscale = defer_upscale

    @classmethod
    def from_processor(cls, processor, image_size: int | None = None, defer_upscale: bool = False) -> "ResizePolicy":
        size = _size_dict(getattr(processor, "size", None)) if getattr(processor, "do_resize", True) else {}
        if image_size is not None and size:
            # Scale every edge limit by the same factor so that e.g. DETR's 800/1333 ratio is kept.
            ref = size.get("shortest_edge") or size.get("height") or size.get("max_height")
            factor = image_size / ref
            size = {k: max(1, int(round(v * factor))) for k, v in size.items()}
        elif image_size is not None:
            size = {"height": image_size, "width": image_size}
        return cls(size, defer_upscale=defer_upscale)

    def input_hw(self, h: int, w: int) -> tuple[int, int]:
        """The model-input size for an image of (h, w) that may already have been resized by this
        policy: resizing twice can move an edge by a pixel through rounding, which is not worth a pass."""
        th, tw = self.target_hw(h, w)
        return (h, w) if abs(th - h) <= 1 and abs(tw - w) <= 1 else (th, tw)

    def target_hw(self, h: int, w: int) -> tuple[int, int]:
        s = self.size
        if "height" in s and "width" in s:
            return int(s["height"]), int(s["width"])
        if "shortest_edge" in s:
            # transformers' own rule (rounding included), so that sizes match the processor exactly.
            from transformers.image_transforms import get_size_with_aspect_ratio

            return tuple(get_size_with_aspect_ratio((h, w), int(s["shortest_edge"]), s.get("longest_edge")))
        if "longest_edge" in s:
            scale = s["longest_edge"] / max(h, w)
            return max(1, int(round(h * scale))), max(1, int(round(w * scale)))
        if "max_height" in s and "max_width" in s:
            scale = min(s["max_height"] / h, s["max_width"] / w)
            return max(1, int(h * scale)), max(1, int(w * scale))
        return h, w

    def __call__(self, image: np.ndarray, boxes_xyxy_abs: np.ndarray | None = None, masks: np.ndarray | None = None):
        """image (H, W, 3) uint8; boxes (N, 4); masks (N, H, W) uint8 -> resized copies."""
        import cv2

        h, w = image.shape[:2]
        th, tw = self.target_hw(h, w)
        if (th, tw) == (h, w) or (self.defer_upscale and th * tw > h * w):
            return image, boxes_xyxy_abs, masks
        interp = cv2.INTER_AREA if th * tw < h * w else cv2.INTER_LINEAR
        image = cv2.resize(image, (tw, th), interpolation=interp)
        if boxes_xyxy_abs is not None and len(boxes_xyxy_abs):
            scale = np.array([tw / w, th / h, tw / w, th / h], dtype=np.float32)
            boxes_xyxy_abs = boxes_xyxy_abs * scale
        if masks is not None and len(masks):
            # Label-like data: nearest neighbour, never an interpolating resize.
            masks = np.stack([cv2.resize(m, (tw, th), interpolation=cv2.INTER_NEAREST) for m in masks])
        return image, boxes_xyxy_abs, masks


class Normalizer:
    """uint8 (B, 3, H, W) on the device -> float (B, 3, H, W) as the processor would produce it."""

    def __init__(self, processor):
        do_rescale = getattr(processor, "do_rescale", True)
        rescale = float(getattr(processor, "rescale_factor", 1 / 255)) if do_rescale else 1.0
        if getattr(processor, "do_normalize", False):
            mean = np.asarray(processor.image_mean, dtype=np.float32)
            std = np.asarray(processor.image_std, dtype=np.float32)
        else:
            mean, std = np.zeros(3, np.float32), np.ones(3, np.float32)
        # x * scale + shift == (x * rescale - mean) / std, one fused multiply-add per pixel.
        self.scale = torch.from_numpy(rescale / std).view(1, 3, 1, 1)
        self.shift = torch.from_numpy(-mean / std).view(1, 3, 1, 1)

    def __call__(self, pixels_uint8: torch.Tensor) -> torch.Tensor:
        scale = self.scale.to(pixels_uint8.device)
        shift = self.shift.to(pixels_uint8.device)
        return torch.addcmul(shift, pixels_uint8.float(), scale)


def resize_on_device(pixels_uint8: torch.Tensor, sizes: list, targets: list, multiple: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded uint8 batch (B, 3, H, W) holding images of `sizes` [(h, w), …] -> float (B, 3, H', W')
    with image i resized to targets[i] (bilinear, antialiased when shrinking, as PIL resamples) and
    padded bottom/right with 0, plus the matching pixel mask (B, H', W') uint8."""
    import torch.nn.functional as F

    hmax = max(t[0] for t in targets)
    wmax = max(t[1] for t in targets)
    if multiple > 1:
        hmax, wmax = math.ceil(hmax / multiple) * multiple, math.ceil(wmax / multiple) * multiple
    out = pixels_uint8.new_zeros((len(sizes), 3, hmax, wmax), dtype=torch.float32)
    mask = pixels_uint8.new_zeros((len(sizes), hmax, wmax), dtype=torch.uint8)
    for i, ((h, w), (th, tw)) in enumerate(zip(sizes, targets)):
        image = pixels_uint8[i : i + 1, :, :h, :w].float()
        if (th, tw) != (h, w):
            image = F.interpolate(image, size=(th, tw), mode="bilinear", align_corners=False, antialias=th < h or tw < w)
        out[i, :, :th, :tw] = image[0]
        mask[i, :th, :tw] = 1
    return out, mask


def pad_stack(images: list[np.ndarray], multiple: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """List of (H_i, W_i, 3) uint8 -> pixels (B, 3, H, W) uint8 padded bottom/right with 0, and
    pixel_mask (B, H, W) uint8 with 1 on real pixels (uint8, not int64: 8x less to fill, move and pin;
    adapters widen it on the device)."""
    hmax = max(im.shape[0] for im in images)
    wmax = max(im.shape[1] for im in images)
    if multiple > 1:
        hmax, wmax = math.ceil(hmax / multiple) * multiple, math.ceil(wmax / multiple) * multiple
    batch = np.empty((len(images), hmax, wmax, 3), dtype=np.uint8)
    mask = np.empty((len(images), hmax, wmax), dtype=np.uint8)
    for i, im in enumerate(images):
        h, w = im.shape[:2]
        batch[i, :h, :w] = im
        batch[i, h:, :] = 0
        batch[i, :h, w:] = 0
        mask[i, :h, :w] = 1
        mask[i, h:, :] = 0
        mask[i, :h, w:] = 0
    pixels = torch.from_numpy(batch).permute(0, 3, 1, 2)
    return pixels, torch.from_numpy(mask)
