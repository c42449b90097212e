"""MLflow as a hook: params (the flattened resolved recipe), metrics per log step and per epoch,
the recipe, metrics.json and the exported model folder as artifacts. Main process only."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path

from cvengine.engine.hooks import Callback
from cvengine.errors import RecipeError
from cvengine.recipe import flatten, recipe_to_dict

log = logging.getLogger("cvengine")

# MLflow refuses param values longer than this.
_MAX_PARAM_CHARS = 6000


def default_tracking_uri(output_dir: str) -> str:
    return "sqlite:///" + os.path.join(os.path.abspath(output_dir), "mlflow.db")


def tracking_uri(recipe) -> str:
    return recipe.tracking.uri or default_tracking_uri(recipe.train.output_dir)


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///…` URI (None for other stores or an in-memory one)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


# A tracking server that does not answer within this many seconds fails the run before it starts
# (MLflow's own retries would wait minutes).
CONNECT_TIMEOUT_S = 10


def check_tracking_uri(recipe) -> None:
    """A `sqlite:` store the user named must lie in an existing folder: SQLAlchemy would create the
    file, and MLflow its missing folders, wherever a typo points. An http(s) server must accept a
    connection within CONNECT_TIMEOUT_S."""
    uri = recipe.tracking.uri
    if not uri:
        return
    db = sqlite_path(uri)
    if db is not None and not db.parent.is_dir():
        raise RecipeError(f"tracking.uri = '{uri}': folder {db.parent} does not exist; create it or fix the path")
    if uri.startswith(("http://", "https://")):
        import socket
        from urllib.parse import urlsplit

        parts = urlsplit(uri)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            socket.create_connection((parts.hostname, port), timeout=CONNECT_TIMEOUT_S).close()
        except OSError as err:
            raise RecipeError(f"tracking.uri = '{uri}': no tracking server answers at {parts.hostname}:{port} within {CONNECT_TIMEOUT_S} s ({err}); start it or fix the URI") from None


@contextlib.contextmanager
def store_lock(uri: str):
    """Holds an exclusive lock beside a sqlite store while it is created or migrated: two runs
    starting on a fresh store otherwise race in the schema migration and one fails."""
    db = sqlite_path(uri)
    try:
        import fcntl
    except ImportError:
        fcntl = None
    if db is None or fcntl is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def mark_abandoned_runs(experiment_id: str, keep_run_id: str | None) -> None:
    """Runs of the experiment still RUNNING whose run folder no live process holds were killed
    (SIGKILL, power loss): mark them KILLED. `keep_run_id` is the run being continued."""
    import mlflow

    from cvengine.engine.checkpoint import run_dir_is_abandoned

    client = mlflow.MlflowClient()
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=200):
        folder = run.data.tags.get("cvengine.run_dir")
        if run.info.run_id == keep_run_id or not folder or not Path(folder).is_dir():
            continue
        if run_dir_is_abandoned(Path(folder)):
            client.set_terminated(run.info.run_id, status="KILLED")
            log.info(f"MLflow run {run.info.run_id} ({folder}) was left RUNNING by a killed process: marked KILLED")


def logged_after(run_id: str, step: int) -> set[tuple[str, int]]:
    """(key, step) of the run's metric rows past `step`: what a process killed after its last
    checkpoint logged, and the resumed one would log again."""
    import mlflow

    client = mlflow.MlflowClient()
    keys = client.get_run(run_id).data.metrics.keys()
    return {(key, m.step) for key in keys for m in client.get_metric_history(run_id, key) if m.step > step}


DEFAULT_OUTPUT_DIR = "runs"


def store_for_uris(explicit: str | None = None) -> str | None:
    """The MLflow store that models:/ and runs:/ URIs are looked up in: `explicit` (a --tracking-uri
    flag), else MLFLOW_TRACKING_URI, else the store a recipe with the default train.output_dir
    writes (./runs/mlflow.db) when it exists here. None: MLflow's own default."""
    if explicit:
        return explicit
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    local = os.path.join(DEFAULT_OUTPUT_DIR, "mlflow.db")
    return default_tracking_uri(DEFAULT_OUTPUT_DIR) if os.path.isfile(local) else None


def local_artifact_root(uri: str) -> str | None:
    """Where a local sqlite store's artifacts belong: `mlartifacts/` beside the .db file, so that a
    run folder's store and its artifacts (logged models included) move and delete together. MLflow's
    own default for a sqlite store is `./mlruns` of whichever folder the first run started in."""
    db = sqlite_path(uri)
    return None if db is None else db.resolve().parent.joinpath("mlartifacts").as_uri()


def set_experiment(name: str):
    """mlflow.set_experiment, creating a new experiment of a local sqlite store with its artifacts
    beside the store (see `local_artifact_root`). Existing experiments keep their location."""
    import mlflow
    from mlflow.exceptions import MlflowException

    root = local_artifact_root(mlflow.get_tracking_uri())
    if root is not None and mlflow.get_experiment_by_name(name) is None:
        try:
            # Run ids and logged-model ids are unique in a store: experiments can share the root.
            mlflow.create_experiment(name, artifact_location=root)
        except MlflowException:
            pass  # created meanwhile by another process: set_experiment below uses it
    return mlflow.set_experiment(name)


# A sqlite store another process is writing answers "database is locked" after SQLite's busy timeout:
# the run's final status is worth a few more tries (a run left RUNNING looks alive).
END_RUN_TRIES = 5


def end_run(status: str) -> None:
    import mlflow
    from mlflow.exceptions import MlflowException

    for attempt in range(END_RUN_TRIES):
        try:
            mlflow.end_run(status=status)
            return
        except MlflowException as err:
            if "database is locked" not in str(err) or attempt == END_RUN_TRIES - 1:
                raise
            time.sleep(1 + attempt)


# The pyfunc model's name in the run; `model` is the plain model folder logged as artifacts.
PYFUNC_NAME = "pyfunc"


def log_and_register(tracking, model_dir: Path, monitor: str, best_metric, mode: str):
    """Log `model_dir` as a pyfunc model in the active run and, with `tracking.registered_model`,
    register it, moving `tracking.alias` only on improvement. Returns (ModelInfo, version or None)."""
    import mlflow

    from cvengine.serving.pyfunc import log_pyfunc_model, register_with_alias

    if tracking.registry_uri:
        mlflow.set_registry_uri(tracking.registry_uri)
    info = log_pyfunc_model(model_dir, name=PYFUNC_NAME)
    log.info(f"logged the pyfunc model: {info.model_uri}")
    version = None
    if tracking.registered_model:
        version, _ = register_with_alias(info.model_uri, tracking.registered_model, tracking.alias, monitor, best_metric, mode)
    return info, version


class MLflowHook(Callback):
    def __init__(self, log_model: bool = True):
        self.log_model = log_model
        self.run_id = None
        self._logged: set[tuple[str, int]] = set()

    def on_fit_start(self, engine, state):
        if not engine.accelerator.is_main_process:
            return
        import mlflow

        recipe = engine.recipe
        uri = tracking_uri(recipe)
        mlflow.set_tracking_uri(uri)
        run_file = Path(engine.run_dir) / "mlflow_run.json"
        previous = json.loads(run_file.read_text()).get("run_id") if run_file.exists() else None
        continued = previous if previous and engine.resume_from is not None else None
        with store_lock(uri):
            experiment = set_experiment(recipe.tracking.experiment)
            mark_abandoned_runs(experiment.experiment_id, continued)
            if continued:
                mlflow.start_run(run_id=continued)
                self._logged = logged_after(continued, state.global_step)
            else:
                mlflow.start_run(run_name=Path(engine.run_dir).name)
        if not continued:
            params = {k: str(v)[:_MAX_PARAM_CHARS] for k, v in flatten(recipe_to_dict(recipe)).items()}
            mlflow.log_params(params)
            import cvengine

            mlflow.set_tags({"cvengine.task": recipe.task, "cvengine.model_family": engine.model_family, "cvengine.version": cvengine.__version__, "cvengine.run_dir": str(engine.run_dir)})
            mlflow.log_artifact(str(Path(engine.run_dir) / "recipe.toml"))
        self.run_id = mlflow.active_run().info.run_id
        run_file.write_text(json.dumps({"run_id": self.run_id, "tracking_uri": tracking_uri(recipe)}))

    def _log_metrics(self, metrics: dict, step: int) -> None:
        """Log, leaving out rows a killed process already logged at this step (a resume repeats
        them, bitwise identical)."""
        import mlflow

        metrics = {k.replace("@", "_"): float(v) for k, v in metrics.items()}
        if self._logged:
            metrics = {k: v for k, v in metrics.items() if (k, step) not in self._logged}
        if metrics:
            mlflow.log_metrics(metrics, step=step)

    def on_log(self, engine, state, logs):
        if self.run_id is None:
            return
        self._log_metrics(logs, state.global_step)

    def on_eval_end(self, engine, state, metrics):
        if self.run_id is None:
            return
        scalar = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        scalar["epoch"] = state.epoch + 1
        self._log_metrics(scalar, state.global_step)

    def on_fit_end(self, engine, state):
        if self.run_id is None:
            return
        import mlflow

        try:
            run_dir = Path(engine.run_dir)
            if (run_dir / "metrics.json").exists():
                mlflow.log_artifact(str(run_dir / "metrics.json"))
            if self.log_model and (run_dir / "model").exists():
                mlflow.log_artifacts(str(run_dir / "model"), artifact_path="model")
            tracking = engine.recipe.tracking
            if (tracking.log_model or tracking.registered_model) and state.status == "FINISHED" and (run_dir / "model").exists():
                log_and_register(engine.recipe.tracking, run_dir / "model", engine.monitor, state.best_metric, engine.mode)
        finally:
            end_run(state.status if state.status in ("FINISHED", "KILLED") else "FAILED")
            self.run_id = None
