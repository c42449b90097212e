"""Runs that end badly or overlap: SIGTERM is handled like Ctrl-C, MLflow runs left RUNNING by a kill
are marked KILLED, a resumed run logs no metric row twice, concurrent runs never share a folder or
break a fresh sqlite store."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomli_w

from conftest import REPO, detection_recipe, run_module
from cvengine.engine.checkpoint import KILL_AT_ENV


def _write(tmp_path: Path, demo, model, **train) -> Path:
    recipe = detection_recipe(demo, model, tmp_path / "runs", **train)
    path = tmp_path / "recipe.toml"
    path.write_text(tomli_w.dumps(recipe))
    return path


def _runs(tmp_path: Path) -> dict:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    return {r.info.run_name: r for r in mlflow.search_runs(experiment_names=["tests"], output_format="list")}


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(p) for p in (task / "children").read_text().split()]
    return found


@pytest.mark.timeout(180)
def test_sigterm_ends_the_run_like_ctrl_c(tmp_path, tiny_model, demo_detection):
    path = _write(tmp_path, demo_detection, tiny_model("detection", "detr"), max_epochs=500)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "cvengine.run", str(path), "--no-progress", "tracking.run_name=long", "data.num_workers=2"]
    log = tmp_path / "stderr.txt"
    with open(log, "w") as err:
        process = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=err)
    last = tmp_path / "runs" / "tests" / "long" / "checkpoints" / "last"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    assert last.exists(), log.read_text()[-2000:]
    workers: list[int] = []
    while not workers and time.time() < deadline:  # the loader's worker processes, during an epoch
        workers = _children(process.pid)
        time.sleep(0.05)
    assert workers
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=120)
    stderr = log.read_text()
    assert process.returncode == 143, stderr[-2000:]
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1] == "terminated"
    time.sleep(1)
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]
    assert _runs(tmp_path)["long"].info.status == "KILLED"
    assert (last / "train_state.json").exists()


@pytest.mark.timeout(240)
def test_killed_run_is_marked_and_its_resume_logs_no_row_twice(tmp_path, tiny_model, demo_detection):
    import mlflow

    path = _write(tmp_path, demo_detection, tiny_model("detection", "detr"), max_epochs=2)
    # Killed while writing epoch 2's checkpoint: steps 5-8 and epoch 2's metrics are logged already.
    killed = run_module("cvengine.run", path, "--no-progress", "tracking.run_name=killed", cwd=tmp_path, env={KILL_AT_ENV: "checkpoint.files-written@2"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert _runs(tmp_path)["killed"].info.status == "RUNNING"

    other = run_module("cvengine.run", path, "--no-progress", "tracking.run_name=other", "train.max_epochs=1", cwd=tmp_path)
    assert other.returncode == 0, other.stderr[-2000:]
    assert _runs(tmp_path)["killed"].info.status == "KILLED"

    resumed = run_module("cvengine.run", path, "--no-progress", "tracking.run_name=killed", "train.resume=last", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    run = _runs(tmp_path)["killed"]
    assert run.info.status == "FINISHED"
    client = mlflow.MlflowClient()
    for key in ("train/loss", "val/map", "epoch"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert sorted(steps) == sorted(set(steps)), (key, steps)
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss")) == list(range(1, 9))


@pytest.mark.timeout(240)
def test_concurrent_runs_on_a_fresh_store(tmp_path, tiny_model, demo_detection):
    path = _write(tmp_path, demo_detection, tiny_model("detection", "detr"), max_epochs=1)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    names = ["same", "same", "other"]
    processes = [subprocess.Popen([sys.executable, "-m", "cvengine.run", str(path), "--no-progress", f"tracking.run_name={name}"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in names]
    results = [(p.wait(timeout=200), p.communicate()[1]) for p in processes]
    same = sorted(code for code, _ in results[:2])
    assert same == [0, 2], [err[-1500:] for _, err in results]
    refused = next(err for code, err in results[:2] if code == 2)
    assert "Traceback" not in refused and ("in use by another training process" in refused or "already exists" in refused), refused[-1500:]
    assert results[2][0] == 0, results[2][1][-2000:]
    runs = _runs(tmp_path)
    assert runs["same"].info.status == "FINISHED" and runs["other"].info.status == "FINISHED"
    assert sorted(p.name for p in (tmp_path / "runs" / "tests").iterdir()) == ["other", "same"]
