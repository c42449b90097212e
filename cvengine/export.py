"""`python -m cvengine.export --model RUN|MODEL_DIR|URI --format onnx|mlflow [--output DIR]`

onnx:   writes DIR/model.onnx with config.json, the processor config and cvengine.json (label map)
        beside it, after checking its outputs against PyTorch with ONNX Runtime.
mlflow: logs the model as an MLflow pyfunc model (into the run's MLflow run when MODEL is a run
        folder of cvengine, else a new run), optionally registered under --registered-model with the
        alias moved only when the run's monitored metric beats the alias holder's.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from cvengine.cli import run_cli
from cvengine.errors import CvengineError

log = logging.getLogger("cvengine")


def _run_info(model: str) -> tuple[Path | None, dict]:
    """(run folder or None, its mlflow_run.json) for a run folder or its model/ folder."""
    path = Path(model)
    run_dir = path if (path / "recipe.toml").exists() else path.parent if (path.parent / "recipe.toml").exists() else None
    if run_dir is None:
        return None, {}
    run_file = run_dir / "mlflow_run.json"
    return run_dir, json.loads(run_file.read_text()) if run_file.exists() else {}


def _best_metric(run_dir: Path | None) -> tuple[str | None, float | None, str]:
    """The monitored metric of a run folder's best epoch (metrics.json) and its direction."""
    if run_dir is None or not (run_dir / "metrics.json").exists():
        return None, None, "max"
    data = json.loads((run_dir / "metrics.json").read_text())
    monitor = data.get("monitor")
    value = (data.get("best") or {}).get(monitor)
    return monitor, value, "min" if monitor and monitor.endswith("/loss") else "max"


def export_mlflow(model: str, tracking_uri: str | None, experiment: str, registered_model: str | None, alias: str, registry_uri: str | None):
    import mlflow

    from cvengine.engine.tracking import PYFUNC_NAME
    from cvengine.serving.predictor import resolve_model_dir

    model_dir = resolve_model_dir(model)
    run_dir, run_info = _run_info(model)
    uri = tracking_uri or run_info.get("tracking_uri") or mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    if registry_uri:
        mlflow.set_registry_uri(registry_uri)
    from cvengine.serving.pyfunc import log_pyfunc_model, register_with_alias

    monitor, value, mode = _best_metric(run_dir)
    if run_info.get("run_id"):
        context = mlflow.start_run(run_id=run_info["run_id"])
    else:
        from cvengine.engine.tracking import set_experiment

        set_experiment(experiment)
        context = mlflow.start_run(run_name=f"export-{run_dir.name if run_dir else model_dir.name}")
    with context:
        info = log_pyfunc_model(model_dir, name=PYFUNC_NAME)
        version = None
        if registered_model:
            version, _ = register_with_alias(info.model_uri, registered_model, alias, monitor, value, mode)
    return info, version


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m cvengine.export", description="Export a trained model to ONNX or as an MLflow pyfunc model.")
    parser.add_argument("--model", required=True, help="run folder, its model/ folder, or an MLflow model URI")
    parser.add_argument("--format", required=True, choices=["onnx", "mlflow"])
    parser.add_argument("--output", help="onnx: output folder (default: <model folder>-onnx)")
    parser.add_argument("--tolerance", type=float, default=None, help="onnx: largest accepted |ONNX - PyTorch| (default 1e-3)")
    parser.add_argument("--tracking-uri", help="mlflow: tracking URI (default: the run's, else MLFLOW_TRACKING_URI)")
    parser.add_argument("--experiment", default="cvengine", help="mlflow: experiment for a new run (default cvengine)")
    parser.add_argument("--registered-model", help="mlflow: register under this name")
    parser.add_argument("--alias", default="champion", help="mlflow: alias moved to the new version on improvement (default champion)")
    parser.add_argument("--registry-uri", help="mlflow: registry URI, e.g. databricks-uc")
    args = parser.parse_args(argv)

    if args.format == "onnx":
        from cvengine.serving.onnx import DEFAULT_TOLERANCE, export_onnx
        from cvengine.serving.predictor import resolve_model_dir

        output = args.output or str(resolve_model_dir(args.model)).rstrip("/") + "-onnx"
        summary = export_onnx(args.model, output, tolerance=args.tolerance if args.tolerance is not None else DEFAULT_TOLERANCE)
        print(f"written: {summary['path']} ({summary['family']}, {summary['exporter']} exporter, max abs diff vs PyTorch {summary['max_abs_diff']:.3g}, dynamic batch {summary['dynamic_batch']}, dynamic size {summary['dynamic_size']})")
        return 0
    if args.alias and not args.registered_model and args.alias != "champion":
        raise CvengineError("--alias needs --registered-model")
    info, version = export_mlflow(args.model, args.tracking_uri, args.experiment, args.registered_model, args.alias, args.registry_uri)
    print(f"logged: {info.model_uri}" + (f"; registered {args.registered_model} version {version}" if version else ""))
    return 0


if __name__ == "__main__":
    run_cli(main)
