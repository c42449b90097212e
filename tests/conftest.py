"""Shared fixtures: tiny random checkpoints saved to disk, demo data sets, CLI runner.

Tests use real parts: real image files, a real MLflow store on disk, real subprocesses.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# Two threads showed erratic 10-100x slowdowns on small CI machines; model hubs are unreachable.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402
import torch  # noqa: E402

from cvengine.engine.hooks import Callback  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """tiny_model(task, family, num_labels=10) -> folder of a small random-init checkpoint, built
    once per session and loaded by path through the same from_pretrained code as a hub id."""
    from cvengine.adapters.tiny import create_tiny

    root = tmp_path_factory.mktemp("tiny_models")
    cache: dict = {}

    def make(task: str, family: str, num_labels: int = 10) -> str:
        key = (task, family, num_labels)
        if key not in cache:
            cache[key] = str(create_tiny(task, family, root / f"{task}-{family}-{num_labels}", num_labels=num_labels))
        return cache[key]

    return make


@pytest.fixture(scope="session")
def demo_detection(tmp_path_factory) -> Path:
    """The digits demo detection data set: 16 train and 8 val images (train/, val/ with images/ and
    annotations.json)."""
    from cvengine.data.demo import make_demo

    root = tmp_path_factory.mktemp("demo_detection")
    make_demo(root, task="detection", seed=0, num_train=16, num_val=8)
    return root


@pytest.fixture(scope="session")
def demo_classification(tmp_path_factory):
    from cvengine.data.demo import make_demo

    root = tmp_path_factory.mktemp("demo_classification")
    make_demo(root, task="classification", seed=0, num_train=16, num_val=8)
    return root


@pytest.fixture(scope="session")
def demo_semantic(tmp_path_factory):
    """8 train and 4 val canvases of 96x96 px: COCO RLE json and PNG masks of the same labels."""
    from cvengine.data.demo import make_demo

    root = tmp_path_factory.mktemp("demo_semantic")
    make_demo(root, task="semantic_segmentation", seed=0, num_train=8, num_val=4, canvas=(96, 96))
    return root


@pytest.fixture(scope="session")
def demo_instance(tmp_path_factory) -> Path:
    from cvengine.data.demo import make_demo

    root = tmp_path_factory.mktemp("demo_instance")
    make_demo(root, task="instance_segmentation", seed=0, num_train=8, num_val=4)
    return root


@pytest.fixture(scope="session")
def demo_panoptic(tmp_path_factory) -> Path:
    from cvengine.data.demo import make_demo

    root = tmp_path_factory.mktemp("demo_panoptic")
    make_demo(root, task="panoptic_segmentation", seed=0, num_train=8, num_val=4)
    return root


def detection_recipe(data_root: Path, model: str, output_dir: Path, **train) -> dict:
    """A recipe dict for the demo data, small and fast; `train` overrides [train] keys."""
    return {
        "task": "detection",
        "model": {"name": str(model), "pretrained": True},
        "data": {
            "root": str(data_root),
            "batch_size": 4,
            "num_workers": 0,
            "train": {"images": "train/images", "annotations": "train/annotations.json"},
            "val": {"images": "val/images", "annotations": "val/annotations.json"},
        },
        "augment": {"enabled": False},
        "train": {"max_epochs": 2, "lr": 1e-3, "output_dir": str(output_dir), "log_every_steps": 1, **train},
        "tracking": {"experiment": "tests"},
    }


def run_module(module: str, *args: str, cwd: Path | str | None = None, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m <module> args…` in a subprocess, as a user would run it."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)


class StopAfterEpoch(Callback):
    """A hook that stops training at the end of epoch `epoch`, as an interruption would."""

    def __init__(self, epoch: int = 1):
        self.epoch = epoch

    def on_epoch_end(self, engine, state):
        if state.epoch == self.epoch:
            state.should_stop = True


def fit_interrupted_and_resumed(make_recipe, callbacks=()):
    """make_recipe(run_name, **train) -> Recipe. Trains run "full" uninterrupted, then run "part"
    stopped after epoch 1 and resumed with train.resume=last; returns the resumed run's final state.
    `callbacks` (a fresh list per call of it) are given to every engine."""
    from cvengine.engine.loop import Engine

    Engine(make_recipe("full"), callbacks=list(callbacks), tracker=None, progress=False).fit()
    stopped = Engine(make_recipe("part"), callbacks=[*callbacks, StopAfterEpoch(1)], tracker=None, progress=False).fit()
    assert stopped.epoch == 1
    return Engine(make_recipe("part", resume="last"), callbacks=list(callbacks), tracker=None, progress=False).fit()


def assert_same_tensors(file_a: Path, file_b: Path) -> None:
    """Two safetensors files hold the same keys and bitwise equal tensors."""
    from safetensors.torch import load_file

    a, b = load_file(str(file_a)), load_file(str(file_b))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), (file_a.name, key)


@pytest.fixture(scope="session")
def trained_detection_run(tiny_model, demo_detection, tmp_path_factory) -> Path:
    """A run folder of a tiny RT-DETR trained 30 epochs (120 steps) on the demo data, without MLflow:
    recipe.toml, checkpoints/best, model/ (with cvengine.json), metrics.json."""
    from cvengine.engine.loop import Engine
    from cvengine.recipe import load_recipe

    output = tmp_path_factory.mktemp("trained_detection")
    recipe = load_recipe(detection_recipe(demo_detection, tiny_model("detection", "rt_detr"), output, max_epochs=30), overrides=["tracking.run_name=trained"])
    engine = Engine(recipe, tracker=None, progress=False)
    engine.fit()
    return Path(engine.run_dir)


@pytest.fixture(scope="session")
def check_unused_parameters():
    """check(adapter, model), after one training backward of `model`: the adapter declares that the
    family leaves parameters without a gradient exactly when some have none, as DDP would find them
    (its find_unused_parameters=False fails on such a step; =True costs every other family's steps)."""

    def check(adapter, model) -> None:
        unused = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert adapter.has_unused_parameters(model) == bool(unused), f"{model.config.model_type}: parameters without a gradient: {unused[:5]}"

    return check
