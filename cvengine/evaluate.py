"""`python -m cvengine.evaluate RUN_DIR_OR_RECIPE [--checkpoint best|last|PATH] [--split val|test]`

Scores a checkpoint on a split; writes the metrics into the run folder's metrics.json (under
"evaluations", next to the training history), the predictions in the task's standard format, and an
HTML report (`report/report.html`, self-contained) for tasks that have one.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from pathlib import Path

from cvengine.cli import run_cli
from cvengine.errors import CvengineError

log = logging.getLogger("cvengine")


def evaluate_run(target: str, checkpoint: str = "best", split: str = "val", overrides=(), report: bool = True) -> tuple[dict, Path]:
    """Evaluate a run folder (or a recipe) and return (metrics, folder the outputs were written to)."""
    from cvengine.engine.checkpoint import checkpoint_dir
    from cvengine.engine.loop import Engine
    from cvengine.recipe import load_recipe

    target_path = Path(target)
    if target_path.is_dir():
        run_dir = target_path.resolve()
        if not (run_dir / "recipe.toml").exists():
            raise CvengineError(f"{run_dir} is not a run folder (no recipe.toml); pass a run folder or a recipe file")
        # The run's exported model folder carries the architecture and label map: no hub access needed.
        model_dir = run_dir / "model"
        extra = [f'model.name="{model_dir}"', "model.pretrained=true"] if model_dir.exists() else []
        recipe = load_recipe(run_dir / "recipe.toml", overrides=[*extra, *overrides])
        weights = checkpoint_dir(run_dir / "checkpoints" / checkpoint) if checkpoint in ("best", "last") else Path(checkpoint)
    else:
        recipe = load_recipe(target, overrides=list(overrides))
        weights = None if checkpoint in ("best", "last") else Path(checkpoint)
        if weights is not None and weights.parent.name == "checkpoints":
            run_dir = weights.parent.parent.resolve()
        else:
            run_dir = Path(recipe.train.output_dir).resolve() / recipe.tracking.experiment / f"eval-{time.strftime('%Y%m%d-%H%M%S')}"
    if weights is not None and not weights.exists():
        raise CvengineError(f"checkpoint not found: {weights}")

    engine = Engine(recipe, checkpoint=None, tracker=None, run_dir=run_dir, progress=False)
    if weights is not None:
        engine.load_weights(weights)
    run_dir.mkdir(parents=True, exist_ok=True)
    predictions = run_dir / ("predictions.json" if split == "val" else f"predictions_{split}.json")
    metrics = engine.evaluate(split, predictions_path=predictions)
    if engine.accelerator.is_main_process:
        metrics_file = run_dir / "metrics.json"
        data = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
        data.setdefault("evaluations", {})[f"{split}@{checkpoint if weights is not None else recipe.model.name}"] = metrics
        tmp = metrics_file.with_name("metrics.json.tmp")
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, metrics_file)
        if report:
            write_report(engine.task, engine.indexes[split], predictions, run_dir / ("report" if split == "val" else f"report_{split}"), title=f"{run_dir.name} — {split} split")
    return metrics, run_dir


def write_report(task, index, predictions_path: Path, out_dir: Path, title: str = "") -> Path | None:
    """The task's HTML report (`out_dir/report.html`), logged to MLflow when a run is active.
    Tasks without a report hook are skipped."""
    if not hasattr(task, "write_report"):
        log.info(f"no evaluation report for the {task.name} task yet")
        return None
    path = Path(task.write_report(index, str(predictions_path), str(out_dir), title=title))
    log.info(f"report: {path}")
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.log_artifacts(str(out_dir), artifact_path=out_dir.name)
    return path


def format_table(metrics: dict) -> str:
    width = max(len(k) for k in metrics) if metrics else 0
    rows = [f"{k:<{width}}  {v:>8.4f}" if isinstance(v, float) and not math.isnan(v) else f"{k:<{width}}  {v!s:>8}" for k, v in metrics.items()]
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m cvengine.evaluate", description="Evaluate a trained run (or a recipe's model) on a split.")
    parser.add_argument("target", help="run folder (runs/<experiment>/<run>) or TOML recipe")
    parser.add_argument("overrides", nargs="*", help="dotted recipe overrides, e.g. data.batch_size=4")
    parser.add_argument("--checkpoint", default="best", help="best, last, or a checkpoint folder (default: best)")
    parser.add_argument("--split", default="val", choices=["val", "test"])
    parser.add_argument("--no-report", action="store_true", help="skip the HTML report (report/report.html)")
    args = parser.parse_intermixed_args(argv)
    metrics, run_dir = evaluate_run(args.target, args.checkpoint, args.split, args.overrides, report=not args.no_report)
    print(format_table(metrics))
    print(f"written: {run_dir / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    run_cli(main)
