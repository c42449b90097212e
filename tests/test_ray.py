"""Ray Train around the engine and Ray Tune over recipes, on a real local Ray cluster (2 CPUs).

Every test has its own timeout: a Ray hang must fail the test, not the whole suite."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import tomli_w

from conftest import detection_recipe, run_module

# Tests that start a local Ray cluster (or Spark) run on one test worker, one after the other.
pytestmark = pytest.mark.xdist_group("ray")

ray = pytest.importorskip("ray", reason='Ray is not installed (pip install "cvengine[ray]")')
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # no token for a local test cluster


@pytest.fixture(scope="module")
def ray_session():
    # The dashboard must run: it reclaims what a scheduler-stopped trial holds.
    ray.init(num_cpus=2, include_dashboard=True, object_store_memory=200 * 2**20)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_run(ray_session, tiny_model, demo_detection, tmp_path_factory):
    """One 2-worker Ray Train run of the demo data (16 train, 8 val images; 4 per batch and worker)."""
    from cvengine.distributed.ray import fit_with_ray
    from cvengine.recipe import load_recipe

    output = tmp_path_factory.mktemp("ray_runs")
    data = detection_recipe(demo_detection, tiny_model("detection", "rt_detr"), output, max_epochs=1)
    data["tracking"]["run_name"] = "ray-2-workers"
    data["distributed"] = {"backend": "ray", "num_workers": 2, "resources_per_worker": {"CPU": 0.5}}
    recipe_file = output / "recipe.toml"
    recipe_file.write_text(tomli_w.dumps(data))
    result = fit_with_ray(load_recipe(recipe_file))
    return result, recipe_file, output


def _mlflow_client(output: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{output / 'mlflow.db'}")


@pytest.mark.timeout(300)
def test_ray_train_two_workers_run_the_engine(ray_run, demo_detection):
    result, _, output = ray_run
    run_dir = Path(result["run_dir"])
    assert run_dir == output / "tests" / "ray-2-workers"

    # Both ranks trained in one process group: 16 images / (4 per batch × 2 workers) = 2 steps each.
    ranks = [json.loads((run_dir / "workers" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert [r["global_step"] for r in ranks] == [2, 2]
    assert ranks[0]["pid"] != ranks[1]["pid"]
    assert all(r["status"] == "FINISHED" for r in ranks)

    # Same run-folder layout as a local run; validation covered the whole val set across workers.
    assert (run_dir / "checkpoints" / "best" / "model.safetensors").exists()
    assert (run_dir / "model" / "config.json").exists()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    num_val = len(json.loads((demo_detection / "val" / "annotations.json").read_text())["images"])
    assert metrics["best"]["val/num_images"] == num_val == 8
    assert result["val/num_images"] == 8 and result["global_step"] == 2

    # Rank 0 alone wrote one complete MLflow run.
    client = _mlflow_client(output)
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["distributed.backend"] == "ray" and float(run.data.params["train.lr"]) == 1e-3
    assert run.data.metrics["val/num_images"] == 8
    assert "model/config.json" in {a.path for a in client.list_artifacts(run.info.run_id, "model")}


@pytest.mark.timeout(300)
def test_ray_train_resumes_last_checkpoint_from_the_cli(ray_run):
    result, recipe_file, output = ray_run
    run_dir = Path(result["run_dir"])
    run_id = json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]

    done = run_module("cvengine.run", recipe_file, "train.resume=last", "train.max_epochs=2", "distributed.backend=ray", "distributed.num_workers=2", timeout=280, env={"RAY_AUTH_MODE": "disabled"})
    assert done.returncode == 0, done.stderr[-3000:]

    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    assert [row["epoch"] for row in history] == [1, 2]
    # Counters continued from the checkpoint: 2 steps before + 2 after, on both ranks.
    assert [json.loads((run_dir / "workers" / f"rank-{r}.json").read_text())["global_step"] for r in (0, 1)] == [4, 4]
    client = _mlflow_client(output)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run_id, "val/map")] == [2, 4]


@pytest.mark.timeout(300)
def test_tune_asha_survives_a_crashing_trial_and_writes_the_best_recipe(ray_session, tiny_model, demo_detection, tmp_path, capsys):
    from cvengine.distributed.tune import tune_recipe
    from cvengine.recipe import load_recipe

    data = detection_recipe(demo_detection, tiny_model("detection", "rt_detr"), tmp_path, max_epochs=2)
    # batch_size 0 is an invalid recipe: the trials that draw it crash when they build it.
    data["tune"] = {
        "num_samples": 4,
        "seed": 1,  # draws batch sizes 4, 4, 0, 0
        "grace_period": 1,
        "resources_per_trial": {"CPU": 0.5},
        "space": {"train.lr": {"loguniform": [1e-4, 1e-2]}, "data.batch_size": {"choice": [0, 4]}},
    }
    recipe_file = tmp_path / "tune.toml"
    recipe_file.write_text(tomli_w.dumps(data))

    summary = tune_recipe(load_recipe(recipe_file))
    # One line per trial as it ends, not Tune's status tables (~100 lines per trial).
    captured = capsys.readouterr()
    output = [line for line in (captured.out + captured.err).splitlines() if line.strip()]
    for t in summary.trials:
        ending = "ended after" if t.status != "ERROR" else "failed"
        assert sum(line.startswith(f"trial {t.trial_id} {ending}") for line in output) == 1, output
    crash_lines = [line for line in output if " failed (" in line]
    assert crash_lines and all("'batch_size' must be > 0" in line for line in crash_lines), crash_lines
    assert len(output) <= 2 * len(summary.trials) + 4, output
    print(summary.table())
    statuses = [t.status for t in summary.trials]
    assert len(statuses) == 4
    assert "ERROR" in statuses and any(s in ("FINISHED", "STOPPED") for s in statuses), statuses
    crashed = [t for t in summary.trials if t.status == "ERROR"]
    assert all(t.values["data.batch_size"] == 0 and "'batch_size' must be > 0" in t.error for t in crashed)
    assert summary.metric == "val/map" and summary.mode == "max"
    assert summary.best.values["data.batch_size"] == 4
    assert "val/map" in capsys.readouterr().out

    best = load_recipe(summary.best_recipe_path)
    assert best.tune is None and best.tracking.run_name is None
    assert best.train.lr == pytest.approx(summary.best.values["train.lr"])
    assert best.data.batch_size == 4

    # One parent run; each trial that started training is a child run in the same store.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == summary.parent_run_id]
    trained = [t for t in summary.trials if t.status != "ERROR"]
    assert len(children) == len(trained)
    assert {r.info.status for r in children} <= {"FINISHED", "KILLED"}
    parent = client.get_run(summary.parent_run_id)
    assert parent.data.metrics["best_val_map"] == pytest.approx(summary.best.metric)


@pytest.mark.timeout(60)
def test_ray_on_spark_passes_the_recipe_section_to_setup_ray_cluster(monkeypatch):
    """Databricks: [distributed.ray_on_spark] becomes setup_ray_cluster(...) and is shut down after."""
    import ray.util.spark

    from cvengine.distributed.ray import ray_cluster
    from cvengine.recipe import load_recipe

    calls = []
    monkeypatch.setattr(ray.util.spark, "setup_ray_cluster", lambda **kw: calls.append(("setup", kw)) or ("127.0.0.1:6379", None))
    monkeypatch.setattr(ray.util.spark, "shutdown_ray_cluster", lambda: calls.append(("shutdown", {})))
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(("init", kw)))
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append(("ray.shutdown", {})))
    recipe = load_recipe({"task": "detection", "model": {"name": "m"}, "distributed": {"backend": "ray", "num_workers": 4, "ray_on_spark": {"max_worker_nodes": 2, "num_cpus_worker_node": 8, "num_gpus_worker_node": 1}}})
    with ray_cluster(recipe.distributed):
        calls.append(("inside", {}))
    assert calls == [
        ("setup", {"max_worker_nodes": 2, "num_cpus_worker_node": 8, "num_gpus_worker_node": 1}),
        ("init", {"address": "127.0.0.1:6379"}),
        ("inside", {}),
        ("ray.shutdown", {}),
        ("shutdown", {}),
    ]


def test_tune_space_errors_name_the_key():
    from cvengine.distributed.tune import search_space
    from cvengine.errors import RecipeError

    with pytest.raises(RecipeError, match=r'tune.space."train.lrr".*not a recipe key'):
        search_space({"train.lrr": {"uniform": [0, 1]}})
    with pytest.raises(RecipeError, match="loguniform needs lo > 0"):
        search_space({"train.lr": {"loguniform": [0, 1]}})
    with pytest.raises(RecipeError, match="must be one of"):
        search_space({"train.lr": {"normal": [0, 1]}})
    space = search_space({"train.lr": {"loguniform": [1e-5, 1e-2]}, "data.batch_size": {"choice": [2, 4]}})
    assert space["data.batch_size"].categories == [2, 4]


def test_volume_paths_stay_and_relative_paths_become_absolute(tmp_path, monkeypatch):
    """Workers and Tune trials run in other folders: the driver sends absolute paths; Unity Catalog
    volume paths are absolute already and pass through untouched."""
    from cvengine.distributed.ray import absolute_recipe
    from cvengine.recipe import load_recipe

    monkeypatch.chdir(tmp_path)
    volume = load_recipe({"task": "detection", "model": {"name": "/Volumes/main/vision/cv/models/rtdetr"}, "data": {"root": "/Volumes/main/vision/cv/data", "train": {"images": "train/images", "annotations": "train/annotations.json"}}, "train": {"output_dir": "/Volumes/main/vision/cv/runs"}})
    resolved = absolute_recipe(volume)
    assert resolved.data.root == "/Volumes/main/vision/cv/data" and resolved.train.output_dir == "/Volumes/main/vision/cv/runs"
    assert resolved.resolve_path(resolved.data.train.annotations) == "/Volumes/main/vision/cv/data/train/annotations.json"
    assert resolved.model.name == "/Volumes/main/vision/cv/models/rtdetr"

    (tmp_path / "models" / "m").mkdir(parents=True)
    relative = load_recipe({"task": "detection", "model": {"name": "models/m"}, "tracking": {"uri": "sqlite:///runs/mlflow.db"}})
    resolved = absolute_recipe(relative)
    assert resolved.data.root == str(tmp_path) and resolved.train.output_dir == str(tmp_path / "runs")
    assert resolved.model.name == str(tmp_path / "models" / "m")
    assert resolved.tracking.uri == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    hub = absolute_recipe(load_recipe({"task": "detection", "model": {"name": "PekingU/rtdetr_r50vd"}}))
    assert hub.model.name == "PekingU/rtdetr_r50vd"
