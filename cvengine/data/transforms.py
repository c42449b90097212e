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


# PIL's resampling filters by the numbers processors store (PILImageResampling).
BILINEAR = 2


def processor_flag(processor, name: str, default=None):
    """A processor setting that may be unset (None) on the instance: the class default then applies."""
    value = getattr(processor, name, None)
    return default if value is None else value


def _size_rule(processor, size: dict):
    """The processor class's own resize rule, (h, w) -> (h', w'), for the classes that differ from
    the base rule of `size`: transformers' own functions, so that sizes match the processor exactly."""
    import inspect

    name = type(processor).__name__
    if name.startswith("Yolos") and "shortest_edge" in size:
        from transformers.models.yolos.image_processing_pil_yolos import get_size_with_aspect_ratio_yolos

        return lambda h, w: tuple(get_size_with_aspect_ratio_yolos((h, w), int(size["shortest_edge"]), size.get("longest_edge")))
    if hasattr(processor, "keep_aspect_ratio") and hasattr(processor, "ensure_multiple_of") and "height" in size:
        from transformers.models.dpt.image_processing_pil_dpt import get_resize_output_image_size as dpt_size

        keep, multiple = bool(processor.keep_aspect_ratio), int(processor.ensure_multiple_of or 1)

        def dpt(h, w):
            out = dpt_size(_shape_only(h, w), (int(size["height"]), int(size["width"])), keep, multiple)
            return int(out.height), int(out.width)

        return dpt
    if _crop_pct_side(processor, size):
        # ConvNeXt: below 384 px the shortest edge goes to shortest_edge / crop_pct, and a centre crop of
        # shortest_edge x shortest_edge follows (see `from_processor`); from 384 px on, a warp to a square.
        side = int(size["shortest_edge"])
        if side < CROP_PCT_BELOW:
            return lambda h, w: _shortest_edge_hw(h, w, int(side / float(processor.crop_pct)))
        return lambda h, w: (side, side)
    divisor = int(processor_flag(processor, "size_divisor", 0) or 0)
    if divisor > 0 and "size_divisor" in inspect.signature(type(processor).resize).parameters:
        # Mask2Former / MaskFormer: the resized image is stretched up to the next multiple of size_divisor.
        base = _base_rule(size)
        return lambda h, w: tuple(int(math.ceil(v / divisor) * divisor) for v in base(h, w))
    return _base_rule(size)


# ConvNeXt's processor centre-crops (crop_pct) below this shortest edge, and warps to a square from it on.
CROP_PCT_BELOW = 384


def _crop_pct_side(processor, size: dict) -> int | None:
    """The crop side of a ConvNeXt-style processor (resize by crop_pct, then a square centre crop), or None."""
    uses_crop_pct = hasattr(type(processor), "crop_pct") and processor_flag(processor, "crop_pct") is not None
    if uses_crop_pct and "shortest_edge" in size and "longest_edge" not in size:
        return int(size["shortest_edge"])
    return None


def _shape_only(h: int, w: int) -> np.ndarray:
    # An image-shaped array of no memory: transformers' size functions read only the shape.
    return np.broadcast_to(np.uint8(0), (1, h, w))


def _shortest_edge_hw(h: int, w: int, shortest_edge: int) -> tuple[int, int]:
    from transformers.image_transforms import get_resize_output_image_size

    return tuple(get_resize_output_image_size(_shape_only(h, w), size=shortest_edge, default_to_square=False, input_data_format="channels_first"))


def _base_rule(size: dict):
    """The base processors' rule for each form of `size`."""
    if "height" in size and "width" in size:
        return lambda h, w: (int(size["height"]), int(size["width"]))
    if "shortest_edge" in size and "longest_edge" in size:
        from transformers.image_transforms import get_size_with_aspect_ratio

        return lambda h, w: tuple(get_size_with_aspect_ratio((h, w), int(size["shortest_edge"]), int(size["longest_edge"])))
    if "shortest_edge" in size:
        return lambda h, w: _shortest_edge_hw(h, w, int(size["shortest_edge"]))
    if "longest_edge" in size:
        def longest(h, w):
            scale = size["longest_edge"] / max(h, w)
            return max(1, int(round(h * scale))), max(1, int(round(w * scale)))

        return longest
    if "max_height" in size and "max_width" in size:
        from transformers.image_utils import get_image_size_for_max_height_width

        return lambda h, w: tuple(get_image_size_for_max_height_width((h, w), int(size["max_height"]), int(size["max_width"])))
    return lambda h, w: (h, w)


def center_crop_box(h: int, w: int, crop_h: int, crop_w: int) -> tuple[int, int]:
    """(top, left) of a centre crop of (crop_h, crop_w) from (h, w), transformers' arithmetic; negative
    when the image is smaller than the crop (it is then padded with 0 around)."""
    return (h - crop_h) // 2, (w - crop_w) // 2


def crop_array(array: np.ndarray, top: int, left: int, crop_h: int, crop_w: int, fill=0) -> np.ndarray:
    """array (H, W, ...) -> (crop_h, crop_w, ...) starting at (top, left); outside the array: fill."""
    h, w = array.shape[:2]
    if top >= 0 and left >= 0 and top + crop_h <= h and left + crop_w <= w:
        return array[top : top + crop_h, left : left + crop_w]
    out = np.full((crop_h, crop_w) + array.shape[2:], fill, dtype=array.dtype)
    src_t, src_l = max(top, 0), max(left, 0)
    src_b, src_r = min(top + crop_h, h), min(left + crop_w, w)
    out[src_t - top : src_b - top, src_l - left : src_r - left] = array[src_t:src_b, src_l:src_r]
    return out


class ResizePolicy:
    """The geometry of a checkpoint's image processor, done in the loader workers: its resize rule
    (the size, its form and the class's own rule), its resampling filter (PIL, on uint8 pixels, as
    the processor resamples) and its centre crop. Label-like data (masks) follows with nearest
    neighbour. Forms of `size`: {height, width} (fixed), {shortest_edge[, longest_edge]} (aspect
    kept), {longest_edge}, {max_height, max_width}."""

    def __init__(self, size: dict, defer_above: float | None = None, resample: int = BILINEAR, crop: tuple[int, int] | None = None, rule=None):
        self.size = dict(size)
        self.resample = int(resample)
        # A resize in a loader worker costs a third of the worker's time, and an upscale there makes
        # every later copy (collate, pinning, host-to-device) bigger. With defer_above, the worker
        # leaves an image as it is when its resize keeps more than that fraction of its pixels
        # (1.0: upscales only) and `resize_on_device` does it on the whole batch. Only PIL's
        # bilinear filter is reproduced there within a grey level (bicubic differs by up to 3).
        self.defer_above = defer_above if self.resample == BILINEAR else None
        self.crop = crop  # (h, w) of the centre crop after resizing, or None
        self._rule = rule or _base_rule(self.size)

    @classmethod
    def from_processor(cls, processor, image_size: int | None = None, defer_above: float | None = None, crop: bool = True) -> "ResizePolicy":
        """The policy of `processor`. image_size: the recipe's `data.image_size`, which scales every
        edge of the processor's size and crop by one factor (so that e.g. DETR's 800/1333 ratio is
        kept) and is written back into the processor, so that the saved processor carries it.
        crop=False: no centre crop (dense tasks predict every pixel of the image). defer_above: see
        the class (a policy that defers must not crop: the crop follows the resize)."""
        do_resize = processor_flag(processor, "do_resize", True)
        size = _size_dict(getattr(processor, "size", None)) if do_resize else {}
        crop_size = _size_dict(getattr(processor, "crop_size", None)) if processor_flag(processor, "do_center_crop", False) else {}
        if image_size is not None:
            ref = crop_size.get("height") or size.get("shortest_edge") or size.get("height") or size.get("max_height") or size.get("longest_edge")
            if ref:
                factor = image_size / ref
                size = {k: max(1, int(round(v * factor))) for k, v in size.items()}
                crop_size = {k: max(1, int(round(v * factor))) for k, v in crop_size.items()}
            else:
                size = {"height": image_size, "width": image_size}
                do_resize = True
            if hasattr(processor, "size"):
                processor.size = dict(size)
                processor.do_resize = do_resize
            if crop_size:
                processor.crop_size = dict(crop_size)
        crop_hw = (int(crop_size["height"]), int(crop_size["width"])) if crop and crop_size else None
        crop_pct_side = _crop_pct_side(processor, size)
        if crop and crop_pct_side and crop_pct_side < CROP_PCT_BELOW:
            crop_hw = (crop_pct_side, crop_pct_side)
        rule = _size_rule(processor, size) if size else None
        return cls(size, defer_above=defer_above, resample=processor_flag(processor, "resample", BILINEAR), crop=crop_hw, rule=rule)

    def input_hw(self, h: int, w: int) -> tuple[int, int]:
        """The model-input size for an image of (h, w) that may already have been resized by this
        policy: resizing twice can move an edge by a pixel through rounding, which is not worth a pass."""
        th, tw = self.target_hw(h, w)
        return (h, w) if abs(th - h) <= 1 and abs(tw - w) <= 1 else (th, tw)

    def deferred(self, h: int, w: int) -> bool:
        """Whether an (h, w) image is left at its size by the loader worker, for `resize_on_device`."""
        if self.defer_above is None or self.crop is not None:
            return False
        th, tw = self.target_hw(h, w)
        return th * tw > self.defer_above * h * w

    def target_hw(self, h: int, w: int) -> tuple[int, int]:
        """The size an (h, w) image is resized to, before any crop."""
        return tuple(int(v) for v in self._rule(h, w))

    def output_hw(self, h: int, w: int) -> tuple[int, int]:
        """The size of the model input an (h, w) image becomes: resized, then cropped."""
        return self.crop if self.crop is not None else self.target_hw(h, w)

    def __call__(self, image: np.ndarray, boxes_xyxy_abs: np.ndarray | None = None, masks: np.ndarray | None = None):
        """image (H, W, 3) uint8; boxes (N, 4); masks (N, H, W) uint8 -> resized (and cropped) copies."""
        import cv2
        from PIL import Image

        h, w = image.shape[:2]
        th, tw = self.target_hw(h, w)
        if (th, tw) != (h, w) and not self.deferred(h, w):
            image = np.asarray(Image.fromarray(image).resize((tw, th), resample=self.resample))
            if boxes_xyxy_abs is not None and len(boxes_xyxy_abs):
                boxes_xyxy_abs = boxes_xyxy_abs * np.array([tw / w, th / h, tw / w, th / h], dtype=np.float32)
            if masks is not None and len(masks):
                # Label-like data: nearest neighbour with PIL's pixel centres (INTER_NEAREST_EXACT), never interpolated.
                masks = np.stack([cv2.resize(m, (tw, th), interpolation=cv2.INTER_NEAREST_EXACT) for m in masks])
        if self.crop is not None:
            ch, cw = self.crop
            top, left = center_crop_box(image.shape[0], image.shape[1], ch, cw)
            image = crop_array(image, top, left, ch, cw)
            if boxes_xyxy_abs is not None and len(boxes_xyxy_abs):
                boxes_xyxy_abs = np.clip(boxes_xyxy_abs - np.array([left, top, left, top], dtype=np.float32), 0, [cw, ch, cw, ch]).astype(np.float32)
            if masks is not None and len(masks):
                masks = np.stack([crop_array(m, top, left, ch, cw) for m in masks])
        return image, boxes_xyxy_abs, masks


class Normalizer:
    """uint8 (B, 3, H, W) on the device -> float (B, 3, H, W) as the processor would produce it:
    rescale (EfficientNet: with an offset to [-1, 1]), normalise (EfficientNet's include_top: by std
    once more), then the channel flip to BGR of processors that do it (MobileViT)."""

    def __init__(self, processor):
        do_rescale = processor_flag(processor, "do_rescale", True)
        rescale = float(processor_flag(processor, "rescale_factor", 1 / 255)) if do_rescale else 1.0
        offset = 1.0 if do_rescale and processor_flag(processor, "rescale_offset", False) else 0.0
        if processor_flag(processor, "do_normalize", False):
            mean = np.asarray(processor.image_mean, dtype=np.float32)
            std = np.asarray(processor.image_std, dtype=np.float32)
        else:
            mean, std = np.zeros(3, np.float32), np.ones(3, np.float32)
        if processor_flag(processor, "include_top", False):
            std = std * np.asarray(processor.image_std, dtype=np.float32)
        # x * scale + shift == ((x * rescale - offset) - mean) / std, one fused multiply-add per pixel.
        self.scale = torch.from_numpy((rescale / std).astype(np.float32)).view(1, 3, 1, 1)
        self.shift = torch.from_numpy(((-offset - mean) / std).astype(np.float32)).view(1, 3, 1, 1)
        self.flip_channels = bool(processor_flag(processor, "do_flip_channel_order", False))

    def __call__(self, pixels_uint8: torch.Tensor) -> torch.Tensor:
        scale = self.scale.to(pixels_uint8.device)
        shift = self.shift.to(pixels_uint8.device)
        out = torch.addcmul(shift, pixels_uint8.float(), scale)
        return out.flip(1) if self.flip_channels else out


def resize_on_device(pixels_uint8: torch.Tensor, sizes: list, targets: list, multiple: int = 1, in_uint8: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded uint8 batch (B, 3, H, W) holding images of `sizes` [(h, w), …] -> float (B, 3, H', W')
    with image i resized to targets[i] (bilinear, antialiased when shrinking, as PIL resamples) and
    padded bottom/right with 0, plus the matching pixel mask (B, H', W') uint8. in_uint8: interpolate
    the uint8 pixels (default: on a CPU) or their float values (default elsewhere)."""
    import torch.nn.functional as F

    hmax, wmax = padded_hw(targets, multiple)
    out = pixels_uint8.new_zeros((len(sizes), 3, hmax, wmax), dtype=torch.float32)
    mask = pixels_uint8.new_zeros((len(sizes), hmax, wmax), dtype=torch.uint8)
    # On a CPU, torch's uint8 kernel (PIL's arithmetic, rounded to uint8 as PIL rounds) is 4x faster
    # than the float one; accelerators interpolate floats only.
    if in_uint8 is None:
        in_uint8 = pixels_uint8.device.type == "cpu"
    for i, ((h, w), (th, tw)) in enumerate(zip(sizes, targets)):
        image = pixels_uint8[i : i + 1, :, :h, :w]
        if (th, tw) != (h, w):
            # antialias=True on an upscale gives plain bilinear weights; the uint8 kernel needs it.
            image = F.interpolate(image if in_uint8 else image.float(), size=(th, tw), mode="bilinear", align_corners=False, antialias=in_uint8 or th < h or tw < w)
        out[i, :, :th, :tw] = image[0]
        mask[i, :th, :tw] = 1
    return out, mask


def resize_labels_on_device(labels: torch.Tensor, sizes: list, targets: list, fill: int, multiple: int = 1) -> torch.Tensor:
    """Padded label maps (B, H, W) of any integer dtype holding maps of `sizes` [(h, w), …] ->
    (B, H', W') of the same dtype, map i resized to targets[i] with nearest neighbour at PIL's pixel
    centres ("nearest-exact", as `ResizePolicy` resizes them on the host) and padded with `fill`."""
    import torch.nn.functional as F

    hmax, wmax = padded_hw(targets, multiple)
    out = labels.new_full((len(sizes), hmax, wmax), fill)
    for i, ((h, w), (th, tw)) in enumerate(zip(sizes, targets)):
        label_map = labels[i, :h, :w]
        if (th, tw) != (h, w):
            # In float: label ids (< 2**24) are exact there, and every device interpolates floats.
            label_map = F.interpolate(label_map[None, None].float(), size=(th, tw), mode="nearest-exact")[0, 0].to(labels.dtype)
        out[i, :th, :tw] = label_map
    return out


def padded_hw(sizes: list, multiple: int = 1) -> tuple[int, int]:
    """The (H, W) a batch of images of `sizes` [(h, w), …] is padded to: the largest of each side,
    rounded up to `multiple`."""
    hmax = max(int(s[0]) for s in sizes)
    wmax = max(int(s[1]) for s in sizes)
    return math.ceil(hmax / multiple) * multiple, math.ceil(wmax / multiple) * multiple


def pad_stack(images: list[np.ndarray], multiple: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """List of (H_i, W_i, 3) uint8 -> pixels (B, 3, H, W) uint8 padded bottom/right with 0, and
    pixel_mask (B, H, W) uint8 with 1 on real pixels (uint8, not int64: 8x less to fill, move and pin;
    adapters widen it on the device)."""
    hmax, wmax = padded_hw([im.shape for im in images], multiple)
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
