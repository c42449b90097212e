"""Reading images the way a model wants them: EXIF orientation applied, always 8-bit RGB."""
from __future__ import annotations

import contextlib

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cvengine.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")

# Refuse decompression bombs with our own error rather than PIL's warning/exception mix.
Image.MAX_IMAGE_PIXELS = 1 << 28
# The default of data.max_image_pixels: 8K UHD is 33 million pixels; a 244 KB PNG can claim 400
# million, which decode to 1.2 GB and many times that through augmentation.
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000


_max_pixels = DEFAULT_MAX_IMAGE_PIXELS


@contextlib.contextmanager
def max_image_pixels(limit: int):
    """The limit readers use when given none, for the duration (a module setting, not a context
    variable: the validator reads headers on a thread pool)."""
    global _max_pixels
    previous, _max_pixels = _max_pixels, limit
    try:
        yield
    finally:
        _max_pixels = previous


def check_pixels(path: str, width: int, height: int, max_pixels: int | None = None) -> None:
    """Refuse an image whose header size is above `max_pixels` (default: the current limit), before
    any pixel is decoded."""
    max_pixels = _max_pixels if max_pixels is None else max_pixels
    if width * height > max_pixels:
        raise DataError(f"image {path} is {width}x{height} = {width * height} pixels, above data.max_image_pixels = {max_pixels}; shrink it, or raise data.max_image_pixels if the memory allows")


def to_rgb(image: Image.Image) -> Image.Image:
    """Grayscale, palette, RGBA, CMYK and 16/32-bit images -> 8-bit RGB."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit / float data: scale the actual value range to 0..255 instead of clipping.
        arr = np.asarray(image, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        image = Image.fromarray(np.rint(arr).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels become black, as they would be shown on a black canvas.
        image = image.convert("RGBA")
        canvas = Image.new("RGB", image.size, (0, 0, 0))
        canvas.paste(image, mask=image.getchannel("A"))
        return canvas
    return image.convert("RGB")


def read_image(path: str, max_pixels: int | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB, EXIF orientation applied. Raises DataError naming the file, also for an
    image above `max_pixels` (from its header, before decoding)."""
    try:
        with Image.open(path) as image:
            check_pixels(path, *image.size, max_pixels)
            # In place: without an orientation to apply, the copy exif_transpose would return costs
            # a fifth of a JPEG decode.
            ImageOps.exif_transpose(image, in_place=True)
            return np.asarray(to_rgb(image))
    except FileNotFoundError:
        raise DataError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"cannot read image {path}: {err}") from None
    except Image.DecompressionBombError as err:
        raise DataError(f"image {path} is too large to decode safely: {err}") from None


def image_folder_classes(images_dir: str, where: str = "") -> list[str]:
    """Sorted names of the class folders of an ImageFolder layout (`images/<class name>/<file>`)."""
    import os

    if not os.path.isdir(images_dir):
        raise DataError(f"{where or 'images folder'}: folder not found: {images_dir}")
    classes = sorted(e for e in os.listdir(images_dir) if os.path.isdir(os.path.join(images_dir, e)) and not e.startswith("."))
    if not classes:
        raise DataError(f"{where or images_dir}: {images_dir} has no class folders; the ImageFolder layout is images/<class name>/<image file> (or give an annotations file)")
    return classes
