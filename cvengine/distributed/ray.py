"""Ray Train around the engine: `distributed.backend = "ray"`.

The driver (this process) starts or joins a Ray cluster and hands the recipe to a `TorchTrainer`.
Every Ray worker runs `train_worker`, which builds the same `cvengine.Engine` from the same recipe:
Ray sets up the process group (gloo on CPU, NCCL on GPU) and Accelerate joins it, so gradients are
all-reduced, validation predictions are gathered across workers, and rank 0 alone writes the run
folder and the MLflow run — exactly as under `accelerate launch`. There is no second training loop.

Checkpoints: the engine's CheckpointHook writes `checkpoints/best`, `checkpoints/last` and `model/` into
the run folder (which must be on storage every node sees: one machine, NFS, a Databricks volume);
`RayReportHook` then hands each evaluation to Ray, so that Ray can restart a failed worker group from
the last checkpoint (`distributed.max_failures`).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
import uuid
from pathlib import Path

import attrs

from cvengine.engine.checkpoint import CheckpointHook
from cvengine.engine.tracking import MLflowHook
from cvengine.errors import CvengineError
from cvengine.recipe import Recipe, anchor_paths, load_recipe, recipe_to_dict

log = logging.getLogger("cvengine")

INSTALL_HINT = 'Ray is not installed: pip install "cvengine[ray]"'


def require_ray():
    try:
        import ray
    except ImportError:
        raise CvengineError(INSTALL_HINT) from None
    return ray


# ----------------------------------------------------------------------------------------------------
# Recipes travel to workers as dicts; workers (and Tune trials, which run in their own folders) must
# not depend on the driver's working directory.


def absolute_recipe(recipe: Recipe) -> Recipe:
    """The recipe with every relative path made absolute against this process's working directory,
    and data.root set (workers and trials run in other folders). Unity Catalog volumes
    (`/Volumes/catalog/schema/volume/...`) are absolute paths and stay as they are."""
    resolved = anchor_paths(recipe, lambda key: os.getcwd())
    if resolved.data.root is None:
        resolved = attrs.evolve(resolved, data=attrs.evolve(resolved.data, root=os.getcwd()))
        resolved.source = recipe.source
    return resolved


# ----------------------------------------------------------------------------------------------------
# The cluster: an existing one (distributed.address), Ray on a Databricks Spark cluster
# ([distributed.ray_on_spark]), or a local one.


@contextlib.contextmanager
def ray_cluster(distributed, local_num_cpus: int | None = None):
    """Connects to (or starts) the Ray cluster the recipe's [distributed] section names for the length
    of the block, and takes down what it started. A Ray session the caller already opened is used as is."""
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    spark = distributed.ray_on_spark
    shutdown_spark = None
    if spark is not None:
        from ray.util.spark import setup_ray_cluster, shutdown_ray_cluster

        options = {k: v for k, v in attrs.asdict(spark).items() if v is not None}
        address, _ = setup_ray_cluster(**options)
        shutdown_spark = shutdown_ray_cluster
        log.info(f"Ray on Spark started: {address} ({spark.max_worker_nodes} worker node(s) at most)")
        ray.init(address=address)
    elif distributed.address:
        ray.init(address=distributed.address)
    else:
        # The dashboard process also reclaims resources of trials a scheduler stops; without it a
        # stopped Ray Train trial can keep its placement group forever.
        # Ray's own INFO lines (dashboard address, result files written) stay out of the user's output.
        ray.init(num_cpus=local_num_cpus, include_dashboard=True, logging_level=logging.WARNING)
    try:
        yield ray
    finally:
        ray.shutdown()
        if shutdown_spark is not None:
            shutdown_spark()


# ----------------------------------------------------------------------------------------------------
# Hooks used inside Ray workers.


def _scalars(metrics: dict) -> dict:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class RayReportHook(CheckpointHook):
    """The engine's CheckpointHook (best, last, `model/`), plus a report to Ray Train after every
    evaluation. Every rank calls `ray.train.report` (Ray uses it as a barrier); rank 0 attaches the
    `checkpoints/last` folder it has just written, tagged with the run folder, which Ray copies to its
    storage and hands back through `ray.train.get_checkpoint()` when it restarts the workers.

    Each rank also writes `workers/rank-<rank>.json` in the run folder at the end (host, pid, world
    size, optimizer steps): a record of where the run went and proof that every worker trained."""

    def on_epoch_end(self, engine, state):
        super().on_epoch_end(engine, state)
        if not state.evaluated:
            return
        import ray.train

        metrics = {**_scalars(state.metrics), "epoch": state.epoch, "global_step": state.global_step, "run_dir": str(engine.run_dir)}
        checkpoint = None
        last = Path(engine.run_dir) / "checkpoints" / "last"
        if engine.accelerator.is_main_process and self.save_last and last.exists():
            checkpoint = ray.train.Checkpoint.from_directory(str(last))
            checkpoint.set_metadata({"run_dir": str(engine.run_dir), "epoch": state.epoch})
        ray.train.report(metrics, checkpoint=checkpoint)

    def on_fit_end(self, engine, state):
        acc = engine.accelerator
        folder = Path(engine.run_dir) / "workers"
        folder.mkdir(parents=True, exist_ok=True)
        record = {"rank": acc.process_index, "world_size": acc.num_processes, "host": socket.gethostname(), "pid": os.getpid(), "device": str(acc.device), "global_step": state.global_step, "epochs": state.epoch, "status": state.status}
        (folder / f"rank-{acc.process_index}.json").write_text(json.dumps(record, indent=2))


class ChildRunMLflowHook(MLflowHook):
    """MLflowHook whose run is a child of `parent_run_id` (one Tune study = one parent run)."""

    def __init__(self, parent_run_id: str, log_model: bool = True):
        super().__init__(log_model=log_model)
        self.parent_run_id = parent_run_id

    def on_fit_start(self, engine, state):
        super().on_fit_start(engine, state)
        if self.run_id is not None:
            import mlflow

            mlflow.set_tags({"mlflow.parentRunId": self.parent_run_id, "cvengine.tune_trial": Path(engine.run_dir).name})


# ----------------------------------------------------------------------------------------------------
# The per-worker function and the driver.


def train_worker(config: dict) -> None:
    """Runs on every Ray Train worker: the same Engine, from the same recipe, in Ray's process group."""
    from cvengine.engine.loop import DEFAULT, Engine

    import ray.train

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    recipe = load_recipe(config["recipe"])
    parent = config.get("parent_run_id")
    tracker = ChildRunMLflowHook(parent) if parent else DEFAULT
    options = dict(callbacks=list(config.get("callbacks", ())), checkpoint=RayReportHook(), tracker=tracker, progress=False)
    restored = ray.train.get_checkpoint()
    if restored is None:
        Engine(recipe, **options).fit()
        return
    # Ray restarted the worker group after a failure: continue the same run folder (and MLflow run)
    # from the last checkpoint this run reported.
    with restored.as_directory() as folder:
        engine = Engine(recipe, run_dir=restored.get_metadata()["run_dir"], **options)
        engine.resume_from = Path(folder)
        engine.fit()


def _user_error(err: BaseException) -> CvengineError | None:
    """The CvengineError a worker raised, if that is what ended the run (else None)."""
    failures = getattr(err, "worker_failures", None) or {}
    for failure in failures.values():
        seen = failure
        for _ in range(5):
            if isinstance(seen, CvengineError):
                return seen
            seen = getattr(seen, "cause", None) or seen.__cause__
            if seen is None:
                break
    return None


def fit_with_ray(recipe: Recipe, callbacks=(), parent_run_id: str | None = None, run_callbacks=()) -> dict:
    """Trains `recipe` with Ray Train on [distributed].num_workers workers, in the Ray session that is
    open (see `ray_cluster`). Returns the last reported metrics with `run_dir`, the run folder.

    callbacks: extra engine hooks (picklable objects; they run on every worker).
    run_callbacks: Ray Train callbacks for the driver side, e.g. Tune's `TuneReportCallback`."""
    ray = require_ray()
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    recipe = absolute_recipe(recipe)
    dist = recipe.distributed
    use_gpu = dist.use_gpu if dist.use_gpu is not None else ray.cluster_resources().get("GPU", 0) > 0
    scaling = ScalingConfig(num_workers=dist.num_workers, use_gpu=use_gpu, resources_per_worker=dict(dist.resources_per_worker) or None)
    # A fresh name per call: Ray silently continues an earlier run of the same name. Resuming one of
    # our runs goes through train.resume instead.
    name = f"{recipe.tracking.experiment}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    run_config = RunConfig(
        name=name,
        storage_path=os.path.join(recipe.train.output_dir, "ray"),
        checkpoint_config=CheckpointConfig(num_to_keep=1),
        failure_config=FailureConfig(max_failures=dist.max_failures),
        callbacks=list(run_callbacks) or None,
    )
    config = {"recipe": recipe_to_dict(recipe), "parent_run_id": parent_run_id, "callbacks": list(callbacks)}
    trainer = TorchTrainer(train_worker, train_loop_config=config, scaling_config=scaling, run_config=run_config)
    try:
        result = trainer.fit()
    except Exception as err:
        user_error = _user_error(err)
        if user_error is not None:
            raise user_error from None
        raise
    metrics = dict(result.metrics or {})
    if result.checkpoint is not None:
        metrics.setdefault("run_dir", result.checkpoint.get_metadata().get("run_dir"))
    return metrics
