"""What the newer families' adapters feed the model equals what the family's own image processor
produces (geometry, padding, normalisation), on non-square images of different sizes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cvengine.adapters import adapter_class, load_model
from cvengine.data.dataset import Sample

CASES = [
    ("detection", "rf_detr"),
    ("detection", "lw_detr"),
    ("detection", "deimv2"),
    ("detection", "table-transformer"),
    ("instance_segmentation", "rf_detr"),
    ("instance_segmentation", "eomt"),
    ("panoptic_segmentation", "eomt_dinov3"),
    ("panoptic_segmentation", "detr"),
]


def _samples(adapter, images):
    samples = []
    for i, image in enumerate(images):
        resized, boxes, masks = adapter.resize(image, np.array([[10, 10, 40, 30]], np.float32), np.ones((1, *image.shape[:2]), np.uint8))
        samples.append(Sample(image=resized, image_id=i, orig_size=image.shape[:2], boxes_xyxy_abs=boxes, labels=np.array([1]), masks=masks))
    return samples


def _smooth_image(h: int, w: int, seed: int) -> np.ndarray:
    """(h, w, 3) uint8 of low-frequency waves: content on which resampling kernels agree, unlike noise."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = np.random.default_rng(seed).uniform(0, 6.3, 3)
    channels = [127.5 + 120 * np.sin(x / (9 + 4 * c) + y / (13 + 3 * c) + phase[c]) for c in range(3)]
    return np.stack(channels, axis=-1).round().astype(np.uint8)


@pytest.mark.parametrize("task, family", CASES, ids=[f"{t}-{f}" for t, f in CASES])
def test_model_inputs_equal_the_image_processor(task, family, tiny_model):
    from PIL import Image

    model, processor, model_type, _ = load_model(tiny_model(task, family, 11), True, task, [str(i) for i in range(11)])
    adapter = adapter_class(task, model_type)(model, processor)
    images = [_smooth_image(90, 150, 0), _smooth_image(170, 120, 1)]
    batch = adapter.collate(_samples(adapter, images))
    ours = adapter.model_inputs(batch, with_labels=False)["pixel_values"]
    theirs = processor(images=[Image.fromarray(im) for im in images], return_tensors="pt")["pixel_values"]
    assert ours.shape == theirs.shape
    # Same geometry, padding and normalisation; the resampling kernels differ (cv2 / torch vs PIL).
    assert (ours - theirs).abs().mean() < 0.05
    # Where the batch is padded (EoMT's square canvas, DETR's batch-wide padding; the fixed-size
    # families have none), the padding is the processor's exactly: zeros after normalisation (DETR
    # line) or normalised black (EoMT), over the same pixels.
    padded = batch.get("pixel_mask", torch.ones(1)) == 0  # (B, H, W)
    if padded.any():
        torch.testing.assert_close(ours.permute(0, 2, 3, 1)[padded], theirs.permute(0, 2, 3, 1)[padded], atol=1e-5, rtol=0)
