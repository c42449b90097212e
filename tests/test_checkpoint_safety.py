"""Checkpoints load without running code: no pickle in them, and a planted pickle is refused by name.
Callbacks keep their tensors in checkpoints through `checkpoint_tensors` / `load_checkpoint_tensors`."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w
import torch
from safetensors.torch import load_file

from conftest import detection_recipe, run_module
from cvengine import Engine, load_recipe
from cvengine.engine.hooks import Callback


class Payload:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def trained_last(tmp_path_factory, tiny_model, demo_detection) -> Path:
    """checkpoints/last of a tiny DETR trained one epoch."""
    root = tmp_path_factory.mktemp("safety")
    recipe = load_recipe(detection_recipe(demo_detection, tiny_model("detection", "detr"), root / "runs", max_epochs=1), overrides=["tracking.run_name=base"])
    Engine(recipe, tracker=None, progress=False).fit()
    return root / "runs" / "tests" / "base" / "checkpoints" / "last"


def test_checkpoint_holds_no_pickle(trained_last):
    names = sorted(p.name for p in trained_last.iterdir())
    assert names == ["model.safetensors", "optimizer.pt", "rng_state_0.safetensors", "scheduler.pt", "train_state.json"]
    # Every .pt file loads under the restricted unpickler, which refuses any code.
    for name in ("optimizer.pt", "scheduler.pt"):
        torch.load(trained_last / name, weights_only=True)
    state = json.loads((trained_last / "train_state.json").read_text())
    assert state["epoch"] == 1 and state["global_step"] == 4  # 16 images / batch 4


def _resume_cli(tmp_path: Path, demo_detection, tiny_model, folder: Path):
    recipe = detection_recipe(demo_detection, tiny_model("detection", "detr"), tmp_path / "runs", max_epochs=2)
    path = tmp_path / "resume.toml"
    path.write_text(tomli_w.dumps(recipe))
    return run_module("cvengine.run", path, "--no-progress", f"train.resume={folder}", cwd=tmp_path)


@pytest.mark.parametrize("planted", ["random_states_0.pkl", "optimizer.pt"])
def test_planted_pickle_is_refused_and_never_runs(planted, tmp_path, trained_last, tiny_model, demo_detection):
    marker = tmp_path / "marker"
    folder = tmp_path / "copied"
    shutil.copytree(trained_last, folder)
    torch.save({"state": Payload(marker)}, folder / planted)
    # The payload is live: an unrestricted load runs it.
    subprocess.run([sys.executable, "-c", f"import torch; torch.load({str(folder / planted)!r}, weights_only=False)"], check=False, capture_output=True)
    assert marker.exists()
    marker.unlink()

    result = _resume_cli(tmp_path, demo_detection, tiny_model, folder)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(folder / planted) in errors[0], result.stderr[-2000:]
    assert not marker.exists()


def test_copied_checkpoint_folder_resumes_in_a_new_run(tmp_path, trained_last, tiny_model, demo_detection):
    import mlflow

    folder = tmp_path / "copied"
    shutil.copytree(trained_last, folder)
    result = _resume_cli(tmp_path, demo_detection, tiny_model, folder)
    assert result.returncode == 0, result.stderr[-2000:]
    (run_dir,) = (tmp_path / "runs" / "tests").iterdir()
    assert (run_dir / "recipe.toml").exists()
    assert json.loads((run_dir / "checkpoints" / "last" / "train_state.json").read_text())["epoch"] == 2
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [row["epoch"] for row in metrics["history"]] == [1, 2]  # epoch 1 came with the checkpoint
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    (run,) = mlflow.search_runs(experiment_names=["tests"], output_format="list")
    assert run.info.status == "FINISHED" and "val/map" in run.data.metrics


class StepCounter(Callback):
    """Counts optimizer steps in a tensor kept in checkpoints (as an EMA of the weights would be)."""

    def __init__(self, stop_after_epoch: int | None = None):
        self.count = torch.zeros((), dtype=torch.int64)
        self.stop_after_epoch = stop_after_epoch

    def on_step_end(self, engine, state):
        self.count += 1

    def on_epoch_end(self, engine, state):
        if state.epoch == self.stop_after_epoch:
            state.should_stop = True

    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        return {"count": self.count}

    def load_checkpoint_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.count = tensors["count"].clone()


def test_callback_tensors_are_saved_and_restored(tmp_path, tiny_model, demo_detection):
    def recipe(**train):
        return load_recipe(detection_recipe(demo_detection, tiny_model("detection", "detr"), tmp_path / "runs", max_epochs=3, **train), overrides=["tracking.run_name=counted"])

    Engine(recipe(), callbacks=[StepCounter(stop_after_epoch=1)], tracker=None, progress=False).fit()
    saved = tmp_path / "runs/tests/counted/checkpoints/last/callbacks/StepCounter.safetensors"
    assert load_file(saved)["count"].item() == 4
    resumed = StepCounter()
    Engine(recipe(resume="last"), callbacks=[resumed], tracker=None, progress=False).fit()
    assert resumed.count.item() == 12  # 3 epochs × 4 steps, 4 of them before the resume
    assert load_file(saved)["count"].item() == 12
