"""Train-time augmentation draws every transform's decisions from ONE random stream per sample, so
that two transforms of a pipeline decide independently (a stream per transform, seeded alike, gives
correlated coin flips: brightness without a flip then never happens)."""
from __future__ import annotations

import numpy as np
import pytest

from cvengine.data.dataset import SampleDataset, augmentation_streams
from cvengine.data.transforms import build_augment
from cvengine.tasks.base import DEFAULT_AUGMENT


def _decisions(dataset: SampleDataset, image: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(flipped, recoloured) per sample index, read off the augmented pixels: the image is dark on
    the left and bright on the right, and brightness/contrast changes (a positive gain) keep that."""
    flipped, recoloured = np.zeros(count, bool), np.zeros(count, bool)
    mirror = image[:, ::-1]
    half = image.shape[1] // 2
    for i in range(count):
        out = dataset.augment_sample(i, image=image)["image"]
        flipped[i] = out[:, :half].astype(np.float64).mean() > out[:, half:].astype(np.float64).mean()
        recoloured[i] = not (np.array_equal(out, image) or np.array_equal(out, mirror))
    return flipped, recoloured


def test_transforms_of_one_pipeline_decide_independently():
    rng = np.random.default_rng(0)
    image = np.concatenate([np.full((8, 4, 3), 60), np.full((8, 4, 3), 180)], axis=1)
    image = (image + rng.integers(0, 8, size=image.shape)).astype(np.uint8)
    augment = build_augment(DEFAULT_AUGMENT, enabled=True, with_boxes=False)  # flip p=0.5, brightness/contrast p=0.2
    dataset = SampleDataset(index=[], augment=augment, seed=42)
    count = 2000
    flipped, recoloured = _decisions(dataset, image, count)
    assert flipped.mean() == pytest.approx(0.5, abs=0.05)
    assert recoloured.mean() == pytest.approx(0.2, abs=0.04)
    # Independent decisions: P(recoloured and not flipped) = 0.2 x 0.5 (± 4.5 standard deviations).
    assert (recoloured & ~flipped).mean() == pytest.approx(0.1, abs=0.03)
    assert recoloured[flipped].mean() == pytest.approx(recoloured[~flipped].mean(), abs=0.06)


def test_streams_depend_on_seed_epoch_and_index_only():
    def draws(seed, epoch, index):
        numpy_stream, python_stream = augmentation_streams(seed, epoch, index)
        return numpy_stream.random(4).tolist(), python_stream.random()

    assert draws(42, 3, 17) == draws(42, 3, 17)
    # Triples that a linear seed formula (seed * a + epoch * b + index) could map to one seed differ.
    assert draws(42, 1, 0) != draws(42, 0, 7919)
    assert len({tuple(draws(0, e, i)[0]) for e in range(3) for i in range(50)}) == 150
