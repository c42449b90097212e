"""The speed switches of a recipe change how fast a run trains, not what it learns: channels-last
memory order and compilation give the loss trajectory of the plain run; persistent loader workers
still augment each epoch differently and identically to workers re-started every epoch."""
from __future__ import annotations

import logging

import pytest
import torch

from conftest import detection_recipe
from cvengine import Engine, load_recipe
from cvengine.engine.hooks import Callback


class LossRecorder(Callback):
    def __init__(self):
        self.losses: list[float] = []

    def on_log(self, engine, state, logs):
        self.losses.append(logs["train/loss"])


def train_losses(tmp_path, tiny_model, demo, task="detection", family="detr", max_epochs=2, **train) -> tuple[list[float], Engine]:
    data = detection_recipe(demo, tiny_model(task, family), tmp_path / "runs", max_epochs=max_epochs, **train)
    data["task"] = task
    del data["data"]["val"]
    recorder = LossRecorder()
    engine = Engine(load_recipe(data), callbacks=[recorder], checkpoint=None, tracker=None, run_dir=tmp_path / "run", progress=False)
    engine.fit()
    return recorder.losses, engine


def test_channels_last_gives_the_same_losses(tmp_path, tiny_model, demo_detection):
    plain, _ = train_losses(tmp_path / "plain", tiny_model, demo_detection)
    fast, engine = train_losses(tmp_path / "cl", tiny_model, demo_detection, channels_last=True)
    conv = next(m for m in engine.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    assert len(plain) == len(fast) == 8
    # Other kernels sum in another order: equal to float rounding, which 8 Adam steps at lr 1e-3 amplify a little.
    assert fast == pytest.approx(plain, rel=1e-3, abs=1e-4)


# A convolutional classifier: DETR's matcher (scipy) breaks the graph into pieces that take minutes to trace on CPU.
COMPILED = dict(task="classification", family="resnet", max_epochs=1)


def test_compile_gives_the_same_losses(tmp_path, tiny_model, demo_classification):
    plain, _ = train_losses(tmp_path / "plain", tiny_model, demo_classification, **COMPILED)
    compiled, engine = train_losses(tmp_path / "compiled", tiny_model, demo_classification, **COMPILED, compile=True, compile_backend="aot_eager")
    assert hasattr(engine.model, "_orig_mod"), "the model was not compiled"
    assert compiled == pytest.approx(plain, rel=1e-3, abs=1e-4)


def test_a_model_that_does_not_compile_trains_eagerly(tmp_path, tiny_model, demo_classification, caplog, monkeypatch):
    import torch._inductor.config as inductor_config

    plain, _ = train_losses(tmp_path / "plain", tiny_model, demo_classification, **COMPILED)
    # A machine without the C++ compiler that inductor's CPU kernels need.
    monkeypatch.setattr(inductor_config.cpp, "cxx", (None, str(tmp_path / "no-such-compiler")))
    with caplog.at_level(logging.WARNING, logger="cvengine"):
        losses, engine = train_losses(tmp_path / "fallback", tiny_model, demo_classification, **COMPILED, compile=True)
    lines = [r.getMessage() for r in caplog.records if "train.compile" in r.getMessage()]
    assert len(lines) == 1 and "training continues eagerly" in lines[0] and "\n" not in lines[0]
    assert not hasattr(engine.model, "_orig_mod")
    assert losses == pytest.approx(plain, rel=1e-5, abs=1e-6)


def epoch_pixels(tmp_path, tiny_model, demo_detection, **data_keys) -> list[torch.Tensor]:
    data = detection_recipe(demo_detection, tiny_model("detection", "detr"), tmp_path / "runs")
    data["augment"] = {"enabled": True}
    data["data"].update(num_workers=1, **data_keys)
    engine = Engine(load_recipe(data), checkpoint=None, tracker=None, run_dir=tmp_path / "run", progress=False)
    dataset, loader = engine._loader("train", train=True)
    epochs = []
    for epoch in range(3):
        dataset.set_epoch(epoch)
        loader.set_epoch(epoch)
        epochs.append(torch.cat([batch["pixels_uint8"].flatten() for batch in loader]))
    return epochs


def test_persistent_workers_augment_each_epoch_as_restarted_workers_do(tmp_path, tiny_model, demo_detection):
    restarted = epoch_pixels(tmp_path / "restarted", tiny_model, demo_detection)
    persistent = epoch_pixels(tmp_path / "persistent", tiny_model, demo_detection, persistent_workers=True, prefetch_factor=4)
    for a, b in zip(restarted, persistent):
        assert torch.equal(a, b)
    # Each epoch draws new augmentations (flips, colour) rather than repeating the first epoch's.
    assert not torch.equal(persistent[0], persistent[1]) and not torch.equal(persistent[1], persistent[2])
