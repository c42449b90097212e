"""The README's Databricks notebook cells, executed in order against the demo data, with VOLUME
pointed at a temporary folder: the walkthrough users paste cannot drift from the code."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

pytest.importorskip("ray", reason='Ray is not installed (pip install "cvengine[ray]")')

README = Path(__file__).resolve().parents[1] / "README.md"
CELL = re.compile(r"<!-- databricks-walkthrough -->\s*```python\n(.*?)```", re.S)


def walkthrough_cells() -> list[str]:
    return CELL.findall(README.read_text())


def test_walkthrough_has_every_step():
    cells = walkthrough_cells()
    assert len(cells) == 6
    assert 'os.environ.get("CVENGINE_VOLUME", "/Volumes/' in cells[0]
    assert "check_dataset" in cells[1] and "fit_with_ray" in cells[3] and "tune_recipe" in cells[4] and "evaluate_run" in cells[5]


@pytest.mark.timeout(400)
def test_walkthrough_runs_locally(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CVENGINE_VOLUME", str(tmp_path / "volume"))
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION", raising=False)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for number, cell in enumerate(walkthrough_cells(), 1):
        exec(compile(cell, f"README.md databricks cell {number}", "exec"), namespace)

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
