"""Where a run's MLflow data lands: the sqlite store AND the artifacts (model copy, logged pyfunc model)
under train.output_dir, whatever folder the run starts in; per-class AP among the run's metrics."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import tomli_w

from conftest import detection_recipe, run_module


@pytest.fixture(scope="module")
def trained(tiny_model, demo_detection, tmp_path_factory):
    """One tracked run with a registered model, started from another folder than its output_dir's:
    (folder holding runs/ = the default output_dir, the run's output, the folder it started in)."""
    root = tmp_path_factory.mktemp("tracked")
    output = root / "runs"
    recipe = detection_recipe(demo_detection, tiny_model("detection", "rt_detr"), output, max_epochs=1)
    recipe["tracking"].update({"log_model": True, "registered_model": "digits"})
    recipe_file = root / "recipe.toml"
    recipe_file.write_text(tomli_w.dumps(recipe))
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    result = run_module("cvengine.run", recipe_file, "--no-progress", cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    return root, output, elsewhere, result


@pytest.mark.timeout(600)
def test_artifacts_beside_the_store_and_per_class_ap_tracked(trained, demo_detection):
    from mlflow.tracking import MlflowClient

    _, output, elsewhere, result = trained
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
    lines = (result.stdout + result.stderr).strip().splitlines()
    epoch_lines = [line for line in lines if line.startswith("epoch 1:")]
    assert len(epoch_lines) == 1 and "val/ap/" not in epoch_lines[0]


def test_run_output_lines(trained, demo_detection):
    """--no-progress: a start-up line, one line per evaluation (counts as integers), the table, and a
    closing line with val/map AND val/map_50, the elapsed time and images/s."""
    _, output, _, result = trained
    lines = [line for line in (result.stdout + result.stderr).strip().splitlines() if line.strip()]
    num_val = len(json.loads((demo_detection / "val" / "annotations.json").read_text())["images"])
    num_train = len(json.loads((demo_detection / "train" / "annotations.json").read_text())["images"])
    # (after the data check's warnings line, when it has warnings)
    (start,) = [line for line in lines if line.startswith("training rt_detr (detection) on cpu: ")]
    assert f"{num_train} train, {num_val} val images" in start and lines.index(start) <= 2
    (epoch_line,) = [line for line in lines if line.startswith("epoch 1:")]
    assert f"val/num_images={num_val}," in epoch_line + "," and ".0000" not in epoch_line.split("val/num_images=")[1]
    assert any(line.startswith("epoch  train/loss") for line in lines), "the table is printed without progress bars too"
    last = lines[-1]
    metrics = json.loads(next(output.rglob("metrics.json")).read_text())["best"]
    assert last.startswith(f"best val/map = {metrics['val/map']:.4f}, val/map_50 = {metrics['val/map_50']:.4f} (epoch 1); 1 epoch(s) in "), last
    assert "train images/s" in last and "model folder" in last


@pytest.mark.timeout(300)
def test_models_uri_resolves_in_the_default_store_without_settings(trained, demo_detection):
    """`python -m cvengine.serve --model models:/digits@champion` as typed, from the folder whose
    runs/mlflow.db holds it (the default train.output_dir), with no MLFLOW_TRACKING_URI."""
    import base64
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    from conftest import REPO

    tmp_path = trained[0]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "cvengine.serve", "--model", "models:/digits@champion", "--port", str(port)],
        cwd=tmp_path, env={**env, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.time() + 120
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                    assert answer.status == 200
                    break
            except OSError:
                assert time.time() < deadline, "the server did not answer /health in 120 s"
                time.sleep(1)
        image = base64.b64encode(sorted((demo_detection / "val" / "images").glob("*.jpg"))[0].read_bytes()).decode()
        body = json.dumps({"inputs": {"image": [image]}}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as answer:
            predictions = json.loads(answer.read())["predictions"]
        assert len(predictions) == 1 and len(predictions[0]["boxes_xyxy"]) == len(predictions[0]["scores"]) > 0
    finally:
        server.terminate()
        server.wait(timeout=30)
