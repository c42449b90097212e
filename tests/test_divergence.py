"""A NaN or inf loss stops training with one line naming the step; nothing non-finite is saved and
the last good checkpoint stays."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import tomli_w
import torch
from safetensors.torch import load_file

from conftest import detection_recipe, run_module
from test_classification import _recipe as classification_recipe


def assert_model_is_best(run_dir: Path) -> None:
    """`model/` holds exactly the weights of `checkpoints/best`: loaded by transformers (which maps
    the names save_pretrained writes back to the model's), its state dict equals best's tensors."""
    from transformers import AutoConfig, AutoModel, AutoModelForImageClassification, AutoModelForObjectDetection

    task = json.loads((run_dir / "model" / "cvengine.json").read_text())["task"]
    auto = {"detection": AutoModelForObjectDetection, "classification": AutoModelForImageClassification}.get(task, AutoModel)
    exported = auto.from_pretrained(run_dir / "model", config=AutoConfig.from_pretrained(run_dir / "model")).state_dict()
    best = load_file(run_dir / "checkpoints" / "best" / "model.safetensors")
    assert set(best) <= set(exported), set(best) - set(exported)
    for key, value in best.items():
        assert torch.equal(value, exported[key]), key
    recorded = json.loads((run_dir / "model" / "cvengine.json").read_text())["checkpoint"]
    state = json.loads((run_dir / "checkpoints" / "best" / "train_state.json").read_text())
    assert (recorded["epoch"], recorded["global_step"]) == (state["epoch"], state["global_step"])


def _run(tmp_path: Path, recipe: dict, *overrides: str):
    path = tmp_path / "recipe.toml"
    path.write_text(tomli_w.dumps(recipe))
    result = run_module("cvengine.run", path, "--no-progress", *overrides, cwd=tmp_path)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    return result, errors


def test_detection_with_huge_lr_stops_at_the_step_that_diverged(tmp_path, tiny_model, demo_detection):
    recipe = detection_recipe(demo_detection, tiny_model("detection", "detr"), tmp_path / "runs", max_epochs=2)
    recipe["tracking"]["run_name"] = "diverged"
    result, errors = _run(tmp_path, recipe, "train.lr=1e6")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    # Step 1 is finite; its 1e6-sized update makes the outputs of step 2 NaN.
    assert len(errors) == 1 and "NaN or inf at step 2 (epoch 1, batch 2)" in errors[0], errors
    run_dir = tmp_path / "runs" / "tests" / "diverged"
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "model").exists()
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    (run,) = mlflow.search_runs(experiment_names=["tests"], output_format="list")
    assert run.info.status == "FAILED"


def _classification(tmp_path, tiny_model, demo_classification) -> dict:
    recipe = classification_recipe(demo_classification, tiny_model("classification", "resnet"), tmp_path / "runs", max_epochs=2)
    recipe["data"]["batch_size"] = 4
    recipe["tracking"]["run_name"] = "diverged"
    return recipe


def test_classification_keeps_the_last_good_checkpoint(tmp_path, tiny_model, demo_classification):
    result, errors = _run(tmp_path, _classification(tmp_path, tiny_model, demo_classification), "train.lr=1e6")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    # Measured: epoch 1 (4 steps) stays finite, a loss of epoch 2 is NaN; the line names its step.
    assert len(errors) == 1 and re.search(r"train/loss is nan at step \d+ \(epoch 2, batch \d\)", errors[0]), errors
    run_dir = tmp_path / "runs" / "tests" / "diverged"
    for name in ("best", "last"):
        folder = run_dir / "checkpoints" / name
        assert json.loads((folder / "train_state.json").read_text())["epoch"] == 1
        assert all(torch.isfinite(t).all() for t in load_file(folder / "model.safetensors").values() if t.is_floating_point())
    assert_model_is_best(run_dir)
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    assert [row["epoch"] for row in history] == [1] and math.isfinite(history[0]["train/loss"])


def test_nonfinite_batches_are_skipped_up_to_the_limit(tmp_path, tiny_model, demo_classification):
    result, errors = _run(tmp_path, _classification(tmp_path, tiny_model, demo_classification), "train.lr=1e6", "train.max_nonfinite_steps=2")
    assert result.returncode == 2, result.stderr[-3000:]
    where = re.compile(r"train/loss is nan at step \d+ \(epoch (\d+), batch (\d+)\)")
    skipped = [tuple(map(int, where.search(line).groups())) for line in result.stderr.splitlines() if "batch skipped" in line]
    # Two NaN batches skipped (nothing applied of them), the third stops the run.
    assert len(skipped) == 2 and skipped[0] < skipped[1], result.stderr[-3000:]
    assert len(errors) == 1 and "3 non-finite" in errors[0], errors
    assert tuple(map(int, where.search(errors[0]).groups())) > skipped[1]
