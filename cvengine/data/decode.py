"""JPEG decoding on the device (`data.decode`): the loader workers read each JPEG's header and bytes
but decode nothing; the main process decodes the whole batch where the model runs, with
torchvision's `decode_jpeg` (nvJPEG on a CUDA device), and the adapter's device-side resize and
normalisation follow as for any batch.

A worker decodes on the device only the files that decode as they are: JPEG, three colour
components (`RGB` to PIL), no EXIF orientation to apply. Every other file (PNG, grayscale or CMYK
JPEG, a rotated photograph) is decoded by PIL in the worker as usual, so a batch may mix both.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from cvengine.errors import RecipeError

DECODE_CHOICES = ("cpu", "gpu", "auto")
# The batch key of the encoded files: per sample the file's bytes, or None where the worker decoded
# it. Python bytes, not tensors: Accelerate moves tensors to the device, and decode_jpeg reads its
# input from host memory.
ENCODED = "encoded_images"


def device_decodable_jpeg(path: str, max_pixels: int | None = None) -> tuple[int, int] | None:
    """(H, W) of a JPEG file that decodes on the device as it is (see the module), from its header;
    None for any other file. Errors as `read_image` raises them."""
    from PIL import Image, UnidentifiedImageError

    from cvengine.data.images import check_pixels
    from cvengine.errors import DataError

    try:
        with Image.open(path) as image:
            check_pixels(path, *image.size, max_pixels)
            if image.format != "JPEG" or image.mode != "RGB" or image.getexif().get(0x0112, 1) != 1:
                return None
            return image.size[1], image.size[0]
    except FileNotFoundError:
        raise DataError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"cannot read image {path}: {err}") from None


def placeholder_image(height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8 zeros standing for an image decoded later on the device: collate functions
    read its size and pad it; calloc'd pages, so nothing is written until then."""
    return np.zeros((height, width, 3), dtype=np.uint8)


class EncodedCollate:
    """The adapter's collate plus, per sample, the bytes of its file when the worker left it
    undecoded (a placeholder in the batch's pixels), else None. Picklable: loader workers get a copy."""

    def __init__(self, collate, images_dir: str, max_pixels: int | None = None):
        self.collate = collate
        self.images_dir = images_dir
        self.max_pixels = max_pixels

    def __call__(self, samples) -> dict:
        batch = self.collate(samples)
        encoded = []
        for s in samples:
            path = os.path.join(self.images_dir, s.file_name)
            # The same header rule as the dataset's read: a file it decoded has None here.
            if device_decodable_jpeg(path, self.max_pixels) is None:
                encoded.append(None)
                continue
            with open(path, "rb") as fh:
                encoded.append(fh.read())
        batch[ENCODED] = encoded
        return batch


def torchvision_io():
    """torchvision.io, or a RecipeError saying how to get it."""
    try:
        import torchvision.io
    except Exception as err:  # noqa: BLE001 - missing, or built for another torch (ImportError, RuntimeError)
        raise RecipeError(f"data.decode = 'gpu' needs torchvision built for torch {torch.__version__} ({type(err).__name__}: {str(err).strip().splitlines()[0][:120]}); pip install torchvision, or set data.decode = 'cpu'") from None
    return torchvision.io


def resolve_decode(mode: str, device: torch.device, adapter, augmenting: bool) -> torch.device | None:
    """The device JPEGs are decoded on (`data.decode`), or None: decoded in the loader workers.
    "gpu" refuses, with one line, what cannot work; "auto" takes the device only where all of it
    holds (a CUDA device, torchvision, an adapter that resizes on the device, no augmentation)."""
    reasons = []
    if device.type != "cuda":
        reasons.append(f"a CUDA device (this run is on {device.type})")
    if not getattr(adapter, "resizes_on_device", False):
        reasons.append(f"an adapter that resizes on the device (detection and semantic segmentation families; not {type(adapter).__name__})")
    elif adapter.resize.defer_above is None:
        reasons.append("a processor whose resize the device reproduces (bilinear resampling, no centre crop)")
    if augmenting:
        reasons.append("augment.enabled = false (Albumentations runs on decoded images in the loader workers)")
    if mode == "cpu" or (mode == "auto" and reasons):
        return None
    if reasons:
        raise RecipeError(f"data.decode = 'gpu' needs {reasons[0]}; set data.decode = 'cpu'")
    if mode == "auto":
        try:
            torchvision_io()
        except RecipeError:
            return None
    else:
        torchvision_io()
    return device


def decode_on_device(batch: dict, device: torch.device | str) -> dict:
    """Fills the placeholders of `batch["pixels_uint8"]` (B, 3, H, W) uint8 on `device` with the
    batch's encoded JPEGs decoded there (one batched call), and drops the bytes from the batch, so
    that a second call on the same batch does nothing."""
    encoded = batch.pop(ENCODED, None)
    if not encoded or all(e is None for e in encoded):
        return batch
    io = torchvision_io()
    rows = [i for i, e in enumerate(encoded) if e is not None]
    data = [torch.frombuffer(bytearray(encoded[i]), dtype=torch.uint8) for i in rows]  # (n_bytes,) each, host memory
    images = io.decode_jpeg(data, mode=io.ImageReadMode.RGB, device=device)  # list of (3, h, w) uint8 on device
    pixels = batch["pixels_uint8"]
    if pixels.device != images[0].device:
        pixels = batch["pixels_uint8"] = pixels.to(images[0].device)
    for row, image in zip(rows, images):
        h, w = image.shape[-2:]
        pixels[row, :, :h, :w] = image
    return batch
