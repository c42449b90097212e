"""The README's Databricks notebook cells, executed in order against the demo data, with VOLUME
pointed at a temporary folder: the walkthrough users paste cannot drift from the code."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

# Tests that start a local Ray cluster (or Spark) run on one test worker, one after the other.
pytestmark = pytest.mark.xdist_group("ray")

pytest.importorskip("ray", reason='Ray is not installed (pip install "cvengine[ray]")')

README = Path(__file__).resolve().parents[1] / "README.md"
CELL = re.compile(r"<!-- databricks-walkthrough -->\s*```python\n(.*?)```", re.S)


def walkthrough_cells() -> list[str]:
    return CELL.findall(README.read_text())


def test_walkthrough_has_every_step():
    cells = walkthrough_cells()
    assert len(cells) == 8
    assert 'os.environ.get("CVENGINE_VOLUME", "/Volumes/' in cells[0]
    assert "check_dataset" in cells[1] and "fit_with_ray" in cells[3] and "tune_recipe" in cells[4] and "evaluate_run" in cells[5]
    assert "export_mlflow" in cells[6] and "mlflow.pyfunc.load_model" in cells[7] and "build_app" in cells[7]


@pytest.mark.timeout(400)
def test_walkthrough_runs_locally(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CVENGINE_VOLUME", str(tmp_path / "volume"))
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION", raising=False)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    try:
        for number, cell in enumerate(walkthrough_cells(), 1):
            exec(compile(cell, f"README.md databricks cell {number}", "exec"), namespace)
    finally:
        import mlflow

        mlflow.set_tracking_uri(None)  # the register cell points the process at the volume's store

    volume = tmp_path / "volume"
    run_dir = Path(namespace["RUN_DIR"])
    assert run_dir.parent == volume / "runs" / "cvengine-demo"
    assert [json.loads((run_dir / "workers" / f"rank-{r}.json").read_text())["world_size"] for r in (0, 1)] == [2, 2]
    assert (run_dir / "model" / "config.json").exists()
    assert namespace["metrics"]["val/num_images"] == 8
    evaluations = json.loads((run_dir / "metrics.json").read_text())["evaluations"]
    assert evaluations["val@best"]["val/num_images"] == 8
    summary = namespace["summary"]
    assert len(summary.trials) == 2 and Path(namespace["BEST_RECIPE"]).exists()
    assert (volume / "runs" / "mlflow.db").exists()
    out = capsys.readouterr().out
    assert "train" in out and "val/map" in out

    # Register: version 1 of the plain local name, logged into the Ray run's MLflow run, holds
    # 'champion' and carries the run's best val/map.
    from mlflow import MlflowClient

    store = f"sqlite:///{volume}/runs/mlflow.db"
    champion = MlflowClient(tracking_uri=store, registry_uri=store).get_model_version_by_alias("cvengine_demo", "champion")
    assert int(champion.version) == namespace["version"] == 1
    assert champion.run_id == json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
    best = json.loads((run_dir / "metrics.json").read_text())["best"]["val/map"]
    assert champion.tags["cvengine.monitor"] == "val/map" and float(champion.tags["cvengine.monitor_value"]) == pytest.approx(best)

    # Serve: boxes for every image (threshold 0 keeps the top 100), the same as the run's model
    # folder predicts, and the HTTP server answered the same for the first image and stopped.
    import numpy as np

    from cvengine.data.images import read_image
    from cvengine.serving.predictor import Predictor

    files, answers = namespace["files"], namespace["answers"]
    assert len(files) == len(answers) == 4
    for answer in answers:
        assert len(answer["boxes_xyxy"]) == len(answer["scores"]) == len(answer["category_ids"]) > 0
    expected = Predictor(run_dir / "model", device="cpu").predict([read_image(str(files[0]))])[0]
    np.testing.assert_allclose(np.asarray(answers[0]["boxes_xyxy"]), expected["boxes_xyxy_abs"], atol=1e-4)
    np.testing.assert_allclose(np.asarray(answers[0]["scores"]), expected["scores"], atol=1e-5)
    http_answer = namespace["http_answer"]
    np.testing.assert_allclose(http_answer["scores"], answers[0]["scores"], atol=1e-6)
    np.testing.assert_allclose(http_answer["boxes_xyxy"], answers[0]["boxes_xyxy"], atol=1e-4)
    assert not namespace["thread"].is_alive()
