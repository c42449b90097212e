"""Reading images (EXIF, modes) and augmentation moving boxes with the image."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cvengine.data.images import read_image
from cvengine.data.transforms import build_augment, pad_stack
from cvengine.errors import DataError, RecipeError


def _gradient(h=40, w=60):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 4, y * 6, np.full_like(x, 128)], axis=-1).astype(np.uint8)


def test_exif_orientation_is_applied(tmp_path):
    pixels = _gradient()
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # stored rotated: viewers turn it 90° clockwise
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=95)
    out = read_image(str(path))
    assert out.shape == (60, 40, 3)
    expected = np.asarray(Image.fromarray(pixels).transpose(Image.Transpose.ROTATE_270))
    assert np.abs(out.astype(int) - expected.astype(int)).mean() < 4


@pytest.mark.parametrize("fmt", ["jpg", "png", "webp", "tiff"])
def test_header_size_is_the_size_read_image_returns(fmt, tmp_path):
    """Training validates sizes from headers only: for every EXIF orientation the header size must be
    the decoded size (TIFFs come oriented from Pillow already, PNGs keep eXIf before the pixels)."""
    from cvengine.data.validate import image_header_size

    for orientation in range(1, 9):
        path = tmp_path / f"{orientation}.{fmt}"
        exif = Image.Exif()
        exif[0x0112] = orientation
        Image.fromarray(_gradient(20, 40)).save(path, exif=exif)
        expected = (40, 20) if orientation >= 5 else (20, 40)
        assert read_image(str(path)).shape[:2] == expected
        assert image_header_size(str(path)) == expected, orientation


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "I;16", "P"])
def test_modes_become_8bit_rgb(mode, tmp_path):
    rgb = Image.fromarray(_gradient())
    if mode == "I;16":
        image = Image.fromarray((np.arange(40 * 60).reshape(40, 60) * 20).astype(np.uint16))
    else:
        image = rgb.convert(mode)
    path = tmp_path / ("x.tiff" if mode in ("CMYK", "I;16") else "x.png")
    image.save(path)
    out = read_image(str(path))
    assert out.dtype == np.uint8 and out.shape == (40, 60, 3)
    if mode == "I;16":
        assert out.min() == 0 and out.max() == 255  # the value range is scaled, not clipped


def test_unreadable_images_name_the_file(tmp_path):
    with pytest.raises(DataError, match="image not found: .*nope.jpg"):
        read_image(str(tmp_path / "nope.jpg"))
    bad = tmp_path / "bad.jpg"
    Image.fromarray(_gradient()).save(bad)
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(DataError, match="cannot read image .*bad.jpg"):
        read_image(str(bad))


def test_boxes_move_with_the_image_and_leave_with_their_labels():
    image = np.zeros((100, 200, 3), np.uint8)
    boxes = np.array([[10, 20, 50, 60], [150, 10, 190, 90]], np.float32)
    labels = np.array([3, 7])
    flip = build_augment([{"name": "HorizontalFlip", "p": 1.0}], enabled=True, with_boxes=True)
    out = flip(image=image, bboxes=boxes, labels=labels)
    np.testing.assert_allclose(np.asarray(out["bboxes"]), [[150, 20, 190, 60], [10, 10, 50, 90]], atol=1e-4)
    assert list(out["labels"]) == [3, 7]
    # A crop of the left half pushes the second box out of the image: box and label go together.
    crop = build_augment([{"name": "Crop", "x_min": 0, "y_min": 0, "x_max": 100, "y_max": 100}], enabled=True, with_boxes=True)
    out = crop(image=image, bboxes=boxes, labels=labels)
    np.testing.assert_allclose(np.asarray(out["bboxes"]), [[10, 20, 50, 60]], atol=1e-4)
    assert list(out["labels"]) == [3]


def test_augment_switches_and_errors():
    assert build_augment([{"name": "HorizontalFlip"}], enabled=False, with_boxes=True) is None
    with pytest.raises(RecipeError, match=r"augment.transforms\[0\]: 'Flipper' is not an Albumentations transform"):
        build_augment([{"name": "Flipper"}], enabled=True, with_boxes=True)
    with pytest.raises(RecipeError, match=r"augment.transforms\[0\] \(HorizontalFlip\): .*prob"):
        build_augment([{"name": "HorizontalFlip", "prob": 0.5}], enabled=True, with_boxes=True)
    with pytest.raises(RecipeError, match=r"augment.transforms\[1\] \(HorizontalFlip\)"):
        build_augment([{"name": "VerticalFlip"}, {"name": "HorizontalFlip", "p": 2}], enabled=True, with_boxes=True)


def test_pad_stack_pads_bottom_right_with_a_mask():
    a, b = np.full((2, 3, 3), 7, np.uint8), np.full((4, 2, 3), 9, np.uint8)
    pixels, mask = pad_stack([a, b])
    assert pixels.shape == (2, 3, 4, 3) and mask.shape == (2, 4, 3)
    assert mask[0].sum() == 6 and mask[1].sum() == 8
    assert pixels[0, :, :2, :].eq(7).all() and pixels[0, :, 2:, :].eq(0).all()


def test_missing_image_size_is_read_from_the_file(tmp_path):
    from cvengine.data.coco import CocoIndex

    (tmp_path / "images").mkdir()
    Image.fromarray(_gradient(40, 60)).save(tmp_path / "images" / "a.png")
    data = {
        "images": [{"id": 7, "file_name": "a.png"}],
        "annotations": [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [10, 5, 20, 30], "iscrowd": 0}],
        "categories": [{"id": 3, "name": "x"}],
    }
    index = CocoIndex(data, "ann.json", str(tmp_path / "images"))
    assert (index.heights[0], index.widths[0]) == (40, 60)
    boxes, labels = index.targets(0)
    np.testing.assert_allclose(boxes, [[10, 5, 30, 35]])
    assert index.num_degenerate == 0
    data["images"][0]["file_name"] = "missing.png"
    with pytest.raises(DataError, match="image id 7 has no width/height"):
        CocoIndex(data, "ann.json", str(tmp_path / "images"))
