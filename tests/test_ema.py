"""train.ema: the average follows RT-DETR's ModelEMA formula step by step, evaluation during training
and the exported model use it, a checkpoint carries it (callbacks/EMA.safetensors) and a resumed run
continues it bit for bit."""
from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from conftest import assert_same_tensors, fit_interrupted_and_resumed
from cvengine.engine.hooks import EMA, Callback
from cvengine.engine.loop import Engine
from cvengine.recipe import load_recipe

DECAY, WARMUP = 0.9, 3


def _recipe(root, model, out, run_name, **train):
    split = {"images": "train/images", "annotations": "train/annotations.json"}
    return load_recipe({
        "task": "classification",
        "model": {"name": model, "pretrained": True},
        "data": {"root": str(root), "batch_size": 4, "num_workers": 0, "train": split, "val": {"images": "val/images", "annotations": "val/annotations.json"}},
        "augment": {"enabled": False},
        "train": {"max_epochs": 2, "lr": 3e-3, "output_dir": str(out), "ema": {"decay": DECAY, "warmup": WARMUP}, **train},
        "tracking": {"experiment": "tests", "run_name": run_name},
    })


class WeightsRecorder(Callback):
    """The model's weights at the start and after every optimizer step (runs before the EMA hook)."""

    def __init__(self):
        self.snapshots = []

    def _record(self, engine):
        self.snapshots.append({k: v.detach().clone() for k, v in engine.accelerator.unwrap_model(engine.model).state_dict().items()})

    def on_fit_start(self, engine, state):
        self._record(engine)

    def on_step_end(self, engine, state):
        self._record(engine)


@pytest.fixture(scope="module")
def ema_run(tiny_model, demo_classification, tmp_path_factory):
    out = tmp_path_factory.mktemp("ema")
    recorder = WeightsRecorder()
    engine = Engine(_recipe(demo_classification, tiny_model("classification", "resnet"), out, "ema"), callbacks=[recorder], tracker=None, progress=False)
    state = engine.fit()
    return engine, state, recorder


def test_average_follows_the_formula(ema_run):
    engine, state, recorder = ema_run
    ema = next(h for h in engine.hooks if isinstance(h, EMA))
    assert state.global_step == 8 and ema.updates == 8 and len(recorder.snapshots) == 9
    expected = {k: v.clone() for k, v in recorder.snapshots[0].items()}
    for step, weights in enumerate(recorder.snapshots[1:], start=1):
        d = DECAY * (1 - math.exp(-step / WARMUP))
        for key, value in weights.items():
            expected[key] = d * expected[key] + (1 - d) * value if value.is_floating_point() else value.clone()
    moved = 0
    for key, value in expected.items():
        torch.testing.assert_close(ema.averaged[key], value, rtol=1e-6, atol=1e-7)
        moved += not torch.equal(ema.averaged[key], recorder.snapshots[-1][key])
    assert moved > 0, "the average differs from the last weights"
    # The model trains on its own weights: the last recorded step is what the model holds now.
    for key, value in engine.accelerator.unwrap_model(engine.model).state_dict().items():
        assert torch.equal(value, recorder.snapshots[-1][key]), key


def test_evaluation_and_export_use_the_average(ema_run):
    engine, state, _ = ema_run
    ema = next(h for h in engine.hooks if isinstance(h, EMA))
    model = engine.accelerator.unwrap_model(engine.model)
    raw_loss = engine.evaluate("val")["val/loss"]
    model.load_state_dict(ema.averaged)
    averaged_loss = engine.evaluate("val")["val/loss"]
    assert state.metrics["val/loss"] == pytest.approx(averaged_loss, abs=1e-6) and raw_loss != pytest.approx(averaged_loss, abs=1e-6)
    # The exported model is the best epoch's average.
    exported = load_file(str(engine.run_dir / "model" / "model.safetensors"))
    best_average = load_file(str(engine.run_dir / "checkpoints" / "best" / "callbacks" / "EMA.safetensors"))
    best_weights = load_file(str(engine.run_dir / "checkpoints" / "best" / "model.safetensors"))
    assert exported.keys() <= {k[len("averaged."):] for k in best_average}
    for key, value in exported.items():
        assert torch.equal(value, best_average[f"averaged.{key}"]), key
    assert any(not torch.equal(value, best_weights[key]) for key, value in exported.items() if key in best_weights)
    # The checkpoint keeps the training weights for resuming, and the average beside them ...
    last = engine.run_dir / "checkpoints" / "last"
    saved = load_file(str(last / "callbacks" / "EMA.safetensors"))
    assert int(saved["updates"]) == 8 and torch.equal(saved["averaged.classifier.1.weight"], ema.averaged["classifier.1.weight"].cpu())
    assert json.loads((engine.run_dir / "metrics.json").read_text())["last"]["val/loss"] == pytest.approx(averaged_loss, abs=1e-6)
    # ... and evaluating the checkpoint (`cvengine.evaluate`'s path) evaluates the average.
    model.load_state_dict(engine.accelerator.unwrap_model(engine.model).state_dict())
    engine.load_weights(last)
    assert engine.evaluate("val")["val/loss"] == pytest.approx(averaged_loss, abs=1e-6)


def test_resume_with_ema_equals_uninterrupted(tiny_model, demo_classification, tmp_path):
    model = tiny_model("classification", "resnet")
    state = fit_interrupted_and_resumed(lambda run_name, **train: _recipe(demo_classification, model, tmp_path, run_name, **train))
    assert state.global_step == 8
    for name in ("model.safetensors", "callbacks/EMA.safetensors"):
        assert_same_tensors(tmp_path / "tests/full/checkpoints/last" / name, tmp_path / "tests/part/checkpoints/last" / name)
    assert torch.equal(load_file(str(tmp_path / "tests/full/model/model.safetensors"))["classifier.1.weight"], load_file(str(tmp_path / "tests/part/model/model.safetensors"))["classifier.1.weight"])


def test_ema_decay_of_one_is_refused():
    from cvengine.errors import RecipeError

    with pytest.raises(RecipeError, match=r"\[train.ema\] decay must be below 1"):
        load_recipe({"task": "classification", "model": {"name": "x"}, "data": {"root": "."}, "train": {"ema": {"decay": 1.0}}})
