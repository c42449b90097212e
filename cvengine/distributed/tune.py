"""Hyper-parameter search with Ray Tune over any recipe key: the [tune] section.

Each trial is the recipe with sampled values for the keys of `tune.space`, trained by the same Engine:
in the trial's own process when distributed.backend = "accelerate", or as a Ray Train run on
distributed.num_workers workers when it is "ray" (a small driver function per trial fits a
TorchTrainer and forwards its reports to Tune). Every evaluation is reported to Tune, so that ASHA
can stop poor trials early. One MLflow parent run holds the study; every trial is a child run with
its own run folder. A crashed trial is recorded and the study goes on.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from pathlib import Path

import attrs
import tomli_w

from cvengine.distributed.ray import ChildRunMLflowHook, absolute_recipe, fit_with_ray, ray_cluster, require_ray
from cvengine.engine.checkpoint import CheckpointHook
from cvengine.errors import RecipeError
from cvengine.recipe import Recipe, _known_keys, dump_recipe, load_recipe, recipe_to_dict

log = logging.getLogger("cvengine")

# kind -> (number of arguments, Ray Tune sampler name)
SAMPLERS = {"loguniform": 2, "uniform": 2, "randint": 2, "choice": None}


@attrs.define
class TrialSummary:
    trial_id: str
    status: str  # FINISHED, STOPPED (by the scheduler), ERROR
    values: dict  # sampled recipe values by dotted key
    metric: float | None  # best value of the study's metric over the trial's evaluations
    epochs: int
    run_dir: str | None
    error: str | None = None


@attrs.define
class TuneSummary:
    metric: str
    mode: str
    trials: list
    best: TrialSummary
    best_recipe_path: Path
    study_dir: Path
    parent_run_id: str

    def table(self) -> str:
        keys = list(self.best.values)
        header = ["trial", "status", *keys, self.metric, "epochs"]
        rows = []
        for t in self.trials:
            shown = "-" if t.metric is None else f"{t.metric:.4f}"
            rows.append([t.trial_id, t.status, *[_short(t.values.get(k)) for k in keys], shown, str(t.epochs)])
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
        lines = ["  ".join(str(c).rjust(w) for c, w in zip(r, widths)) for r in [header, *rows]]
        errors = [f"{t.trial_id}: {t.error}" for t in self.trials if t.error]
        best = f"best: {self.best.trial_id} ({self.metric} = {self.best.metric:.4f}); recipe: {self.best_recipe_path}"
        return "\n".join(lines + ["", best] + (["errors:", *errors] if errors else []))


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# ----------------------------------------------------------------------------------------------------
# The search space


def search_space(space: dict) -> dict:
    """`{"train.lr": {"loguniform": [1e-5, 1e-2]}}` -> Ray Tune samplers, checking every key and range."""
    from ray import tune

    if not space:
        raise RecipeError('[tune.space] is empty: give at least one key, e.g. "train.lr" = {loguniform = [1e-5, 1e-2]}')
    known = set(_known_keys(Recipe))
    out = {}
    for key, spec in space.items():
        where = f'tune.space."{key}"'
        if key not in known or key.startswith(("tune.", "distributed.")):
            raise RecipeError(f"{where}: '{key}' is not a recipe key that a trial can vary (e.g. train.lr, data.batch_size)")
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in SAMPLERS:
            raise RecipeError(f"{where} must be one of {{loguniform = [lo, hi]}}, {{uniform = [lo, hi]}}, {{randint = [lo, hi]}}, {{choice = [a, b, …]}}; got {spec!r}")
        kind, args = next(iter(spec.items()))
        if not isinstance(args, list) or not args or (SAMPLERS[kind] and len(args) != SAMPLERS[kind]):
            raise RecipeError(f"{where}: {kind} needs {SAMPLERS[kind] or 'a non-empty list of'} values; got {args!r}")
        if kind != "choice" and not args[0] < args[1]:
            raise RecipeError(f"{where}: {kind} needs lo < hi; got {args!r}")
        if kind == "loguniform" and args[0] <= 0:
            raise RecipeError(f"{where}: loguniform needs lo > 0; got {args!r}")
        out[key] = tune.choice(args) if kind == "choice" else getattr(tune, kind)(*args)
    return out


def trial_recipe(base: dict, values: dict, run_name: str | None = None) -> Recipe:
    """The base recipe with the sampled values, validated like command-line overrides."""
    overrides = [f"{key}={_toml_value(value)}" for key, value in values.items()]
    if run_name:
        overrides.append(f'tracking.run_name="{run_name}"')
    return load_recipe(base, overrides=overrides)


def _toml_value(value) -> str:
    return tomli_w.dumps({"v": value}).split("=", 1)[1].strip()


# ----------------------------------------------------------------------------------------------------
# Trials


class TuneReportHook(CheckpointHook):
    """The engine's CheckpointHook, plus a report of every evaluation to Ray Tune, for in-process
    trials. The report comes after the epoch's checkpoint is written: the scheduler may end the trial
    at any report, and what the trial has learnt until then is kept in its run folder."""

    def on_epoch_end(self, engine, state):
        super().on_epoch_end(engine, state)
        if not state.evaluated:
            return
        from ray import tune

        scalars = {k: float(v) for k, v in state.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        tune.report({**scalars, "epoch": state.epoch, "run_dir": str(engine.run_dir)})


def _trial_name(config: dict) -> str:
    from ray import tune

    return f"{config['study']}-{tune.get_context().get_trial_id()}"


def run_trial_in_process(config: dict) -> None:
    """A trial on one process (one device): the Engine itself, with the Tune report hook."""
    from cvengine.engine.loop import Engine

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    recipe = trial_recipe(config["base"], config["values"], _trial_name(config))
    engine = Engine(recipe, checkpoint=TuneReportHook(), tracker=ChildRunMLflowHook(config["parent_run_id"]), progress=None)
    engine.fit()


def run_trial_with_ray_train(config: dict) -> None:
    """A trial that is itself a Ray Train run: the workers report each evaluation to Ray Train
    (RayReportHook) and TuneReportCallback forwards the reports to Tune."""
    from ray.tune.integration.ray_train import TuneReportCallback

    recipe = trial_recipe(config["base"], config["values"], _trial_name(config))
    fit_with_ray(recipe, parent_run_id=config["parent_run_id"], run_callbacks=[TuneReportCallback()])


# ----------------------------------------------------------------------------------------------------
# The study


def tune_recipe(recipe: Recipe, local_num_cpus: int | None = None) -> TuneSummary:
    """Runs the search the recipe's [tune] section describes; returns the trials and the best one,
    whose recipe is written to `<output_dir>/<experiment>/<study>/best_recipe.toml`."""
    require_ray()
    if recipe.tune is None:
        raise RecipeError(f"{recipe.source or 'the recipe'} has no [tune] section: add [tune.space] with the keys to search")
    settings = recipe.tune
    space = search_space(settings.space)
    from cvengine.tasks import get_task

    monitor = recipe.train.monitor or get_task(recipe.task).main_metric
    metric = settings.metric or monitor
    mode = settings.mode or ("min" if "loss" in metric else get_task(recipe.task).mode)

    base_recipe = absolute_recipe(attrs.evolve(recipe, tune=None))
    base = recipe_to_dict(attrs.evolve(base_recipe, tracking=attrs.evolve(base_recipe.tracking, run_name=None), train=attrs.evolve(base_recipe.train, resume=None)))
    study = f"tune-{time.strftime('%Y%m%d-%H%M%S')}"
    study_dir = Path(base_recipe.train.output_dir) / base_recipe.tracking.experiment / study
    study_dir.mkdir(parents=True, exist_ok=True)

    import mlflow

    from cvengine.engine.tracking import set_experiment, tracking_uri

    mlflow.set_tracking_uri(tracking_uri(base_recipe))
    set_experiment(base_recipe.tracking.experiment)
    with mlflow.start_run(run_name=study) as parent:
        mlflow.log_params({"tune.metric": metric, "tune.mode": mode, "tune.num_samples": settings.num_samples, "tune.scheduler": settings.scheduler, "tune.search": settings.search})
        mlflow.log_dict(settings.space, "tune_space.json")
        mlflow.set_tags({"cvengine.task": recipe.task, "cvengine.study_dir": str(study_dir)})
        with ray_cluster(recipe.distributed, local_num_cpus=local_num_cpus):
            results = _fit_study(recipe, settings, space, base, study, study_dir, parent.info.run_id, metric, mode)
        trials = _summaries(results, metric, mode, recipe.train.max_epochs)
        _close_trial_runs(trials)
        finished = [t for t in trials if t.metric is not None and not math.isnan(t.metric)]
        if not finished:
            errors = "; ".join(f"{t.trial_id}: {t.error}" for t in trials if t.error) or "no trial reported the metric"
            raise RecipeError(f"every trial failed ({errors}); fix the recipe or narrow [tune.space]")
        best = max(finished, key=lambda t: t.metric) if mode == "max" else min(finished, key=lambda t: t.metric)
        best_recipe = trial_recipe(base, best.values)
        best_recipe_path = study_dir / "best_recipe.toml"
        best_recipe_path.write_text(f"# Best trial {best.trial_id} of {study}: {metric} = {best.metric:.6g} ({mode})\n" + dump_recipe(best_recipe))
        summary = TuneSummary(metric, mode, trials, best, best_recipe_path, study_dir, parent.info.run_id)
        (study_dir / "trials.txt").write_text(summary.table() + "\n")
        mlflow.log_metric(f"best_{metric}".replace("/", "_"), best.metric)
        mlflow.log_artifact(str(best_recipe_path))
        mlflow.log_artifact(str(study_dir / "trials.txt"))
        mlflow.set_tags({"cvengine.best_trial": best.trial_id, "cvengine.best_run_dir": str(best.run_dir)})
    return summary


def _fit_study(recipe, settings, space, base, study, study_dir, parent_run_id, metric, mode):
    from ray import tune

    if recipe.distributed.backend == "ray":
        # The driver only waits on its Ray Train run; the workers hold the resources of [distributed].
        trainable = tune.with_resources(run_trial_with_ray_train, {"cpu": 0.1})
    else:
        resources = {k.lower(): v for k, v in (settings.resources_per_trial or {"CPU": 1}).items()}
        trainable = tune.with_resources(run_trial_in_process, resources)
    seed = settings.seed if settings.seed is not None else recipe.train.seed
    if settings.search == "optuna":
        try:
            from ray.tune.search.optuna import OptunaSearch
        except ImportError:
            raise RecipeError("tune.search = 'optuna' needs Optuna: pip install optuna") from None
        try:
            search_alg = OptunaSearch(seed=seed)
        except (ImportError, AssertionError):
            raise RecipeError("tune.search = 'optuna' needs Optuna: pip install optuna") from None
    else:
        from ray.tune.search.basic_variant import BasicVariantGenerator

        search_alg = BasicVariantGenerator(random_state=seed)
    scheduler = None
    if settings.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        # One Tune iteration = one evaluation of the trial.
        evaluations = math.ceil(recipe.train.max_epochs / recipe.train.eval_every_epochs)
        # max_t one above the last evaluation: a trial that runs to the end finishes on its own (and
        # logs its model to MLflow) instead of being stopped at its last report.
        scheduler = ASHAScheduler(max_t=evaluations + 1, grace_period=min(settings.grace_period, evaluations), reduction_factor=settings.reduction_factor)
    tuner = tune.Tuner(
        trainable,
        param_space={"base": base, "values": space, "study": study, "parent_run_id": parent_run_id},
        tune_config=tune.TuneConfig(metric=metric, mode=mode, num_samples=settings.num_samples, search_alg=search_alg, scheduler=scheduler, max_concurrent_trials=settings.max_concurrent_trials),
        # Tune's own status tables (hundreds of lines for a few trials) are replaced by one line per trial.
        run_config=tune.RunConfig(name=study, storage_path=str(study_dir / "ray"), failure_config=tune.FailureConfig(fail_fast=False), verbose=0, callbacks=[_trial_lines(metric, mode)]),
    )
    print(f"tune: {settings.num_samples} trials, searching {', '.join(space)} ({settings.search}, {settings.scheduler}); {metric} {mode}; study {study_dir}", flush=True)
    with _quiet_tune_output():
        return tuner.fit()


@contextlib.contextmanager
def _quiet_tune_output():
    """Tune's newer console output prints its experiment box and every failed trial's traceback even
    at verbose=0; its legacy output honours verbose=0. A trial's failure is printed by TrialLines and
    in the final table, so Tune's own error log lines are left out too."""
    previous_env = os.environ.get("RAY_AIR_NEW_OUTPUT")
    tune_logger = logging.getLogger("ray.tune")
    previous_level = tune_logger.level
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    tune_logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        tune_logger.setLevel(previous_level)
        if previous_env is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = previous_env


def _trial_lines(metric: str, mode: str):
    """A Tune callback that prints one line when a trial ends: its values and its best metric."""
    from ray import tune

    class TrialLines(tune.Callback):
        def __init__(self):
            self.best = {}  # trial id -> best metric reported so far

        def on_trial_result(self, iteration, trials, trial, result, **info):
            value = result.get(metric)
            if isinstance(value, (int, float)) and not math.isnan(value):
                seen = self.best.get(trial.trial_id)
                better = seen is None or (value > seen if mode == "max" else value < seen)
                self.best[trial.trial_id] = value if better else seen

        def on_trial_complete(self, iteration, trials, trial, **info):
            epochs = (trial.last_result or {}).get("epoch", 0)
            best = self.best.get(trial.trial_id)
            shown = "-" if best is None else f"{best:.4f}"
            print(f"trial {trial.trial_id} ended after {epochs} epochs: best {metric} {shown} ({_values_text(trial.config)})", flush=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            print(f"trial {trial.trial_id} failed ({_values_text(trial.config)}): {_last_error_line(trial.error_file)}", flush=True)

    return TrialLines()


def _last_error_line(error_file: str | None) -> str:
    """The exception's own message: the last line of Tune's error file, without the class name."""
    try:
        lines = [line for line in Path(error_file).read_text().splitlines() if line.strip()]
    except (OSError, TypeError):
        return "see the trial's error file in the study folder"
    last = lines[-1] if lines else ""
    head, _, message = last.partition(": ")
    return message if message and head.replace(".", "").replace("_", "").isalnum() else last


def _values_text(config: dict) -> str:
    return ", ".join(f"{k}={_short(v)}" for k, v in config.get("values", {}).items())


def _summaries(results, metric: str, mode: str, max_epochs: int) -> list[TrialSummary]:
    from cvengine.cli import one_line

    trials = []
    for result in results:
        frame = result.metrics_dataframe
        best_value, epochs, run_dir = None, 0, None
        if frame is not None and metric in frame:
            column = frame[metric].dropna()
            if len(column):
                best_value = float(column.max() if mode == "max" else column.min())
            epochs = int(frame["epoch"].max()) if "epoch" in frame else len(frame)
            run_dir = frame["run_dir"].dropna().iloc[-1] if "run_dir" in frame and frame["run_dir"].notna().any() else None
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name[:40]
        if result.error is not None:
            status, error = "ERROR", one_line(_root_error(result.error))
        else:
            status, error = "FINISHED", None
        if status == "FINISHED" and epochs < max_epochs:
            status = "STOPPED"  # by the scheduler
        trials.append(TrialSummary(trial_id, status, dict(result.config["values"]), best_value, epochs, run_dir, error))
    return trials


def _root_error(error: BaseException) -> BaseException:
    """The user's exception inside Ray's wrappers (RayTaskError keeps it as `cause`)."""
    seen = error
    for _ in range(5):
        inner = getattr(seen, "cause", None) or seen.__cause__
        if inner is None:
            break
        seen = inner
    return seen


def _close_trial_runs(trials: list[TrialSummary]) -> None:
    """A trial the scheduler stopped ends without its fit's end event; mark its MLflow run KILLED."""
    import json

    from mlflow.tracking import MlflowClient

    for t in trials:
        run_file = Path(t.run_dir) / "mlflow_run.json" if t.run_dir else None
        if run_file is None or not run_file.exists():
            continue
        info = json.loads(run_file.read_text())
        client = MlflowClient(tracking_uri=info["tracking_uri"])
        if client.get_run(info["run_id"]).info.status == "RUNNING":
            client.set_terminated(info["run_id"], status="KILLED" if t.status == "STOPPED" else "FAILED")
