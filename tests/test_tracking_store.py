"""Where a run's MLflow data lands: the sqlite store AND the artifacts (model copy, logged pyfunc model)
under train.output_dir, whatever folder the run starts in; per-class AP among the run's metrics."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import tomli_w

from conftest import detection_recipe, run_module


@pytest.mark.timeout(600)
def test_artifacts_beside_the_store_and_per_class_ap_tracked(tiny_model, demo_detection, tmp_path):
    from mlflow.tracking import MlflowClient

    output = tmp_path / "runs"
    recipe = detection_recipe(demo_detection, tiny_model("detection", "rt_detr"), output, max_epochs=1)
    recipe["tracking"].update({"log_model": True, "registered_model": "digits"})
    recipe_file = tmp_path / "recipe.toml"
    recipe_file.write_text(tomli_w.dumps(recipe))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = run_module("cvengine.run", recipe_file, "--no-progress", cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    # Nothing in the folder the run was started from.
    assert list(elsewhere.iterdir()) == []

    client = MlflowClient(tracking_uri=f"sqlite:///{output / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tests")
    assert experiment.artifact_location == (output / "mlartifacts").as_uri()
    run = client.search_runs([experiment.experiment_id])[0]
    assert run.info.artifact_uri.startswith((output / "mlartifacts").as_uri())
    assert (Path(run.info.artifact_uri.removeprefix("file://")) / "model" / "config.json").exists()
    version = client.get_model_version("digits", "1")
    model_files = list((output / "mlartifacts").rglob("MLmodel"))
    assert model_files, "the logged pyfunc model lies under the run folder's store"
    assert version.source

    # Per-class AP of the last evaluation, as metrics.json has it.
    run_dir = Path(run.data.tags["cvengine.run_dir"])
    last = json.loads((run_dir / "metrics.json").read_text())["last"]
    per_class = {k: v for k, v in last.items() if k.startswith("val/ap/")}
    categories = json.loads((demo_detection / "val" / "annotations.json").read_text())["categories"]
    assert set(per_class) <= {f"val/ap/{c['name']}" for c in categories} and per_class
    for key, value in per_class.items():
        assert run.data.metrics[key] == pytest.approx(value, abs=1e-9)
    # ... and left out of the one-line epoch summary.
    epoch_lines = [line for line in (result.stdout + result.stderr).splitlines() if "epoch 1:" in line]
    assert epoch_lines and not any("val/ap/" in line for line in epoch_lines)
