"""`python -m cvengine.run RECIPE [key=value …]`: train, validating every `train.eval_every_epochs` and
keeping the best checkpoint, the exported model folder and metrics.json in the run folder."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from cvengine.cli import run_cli

log = logging.getLogger("cvengine")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m cvengine.run", description="Train a model from a TOML recipe; validation picks the best checkpoint.")
    parser.add_argument("recipe", help="TOML recipe file")
    parser.add_argument("overrides", nargs="*", help="dotted overrides such as train.max_epochs=3 data.root=./demo")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    args = parser.parse_intermixed_args(argv)

    from cvengine.engine.loop import Engine
    from cvengine.recipe import load_recipe

    recipe = load_recipe(args.recipe, overrides=args.overrides)
    if recipe.distributed.backend == "ray":
        from cvengine.distributed.ray import fit_with_ray, ray_cluster

        with ray_cluster(recipe.distributed):
            result = fit_with_ray(recipe)
        log.info(f"Ray Train run finished; run folder: {result.get('run_dir')}")
        return 0
    engine = Engine(recipe, progress=not args.no_progress)
    state = engine.fit()
    if engine.accelerator.is_main_process:
        log.info(f"best {engine.monitor} = {state.best_metric} (epoch {state.best_epoch}); run folder: {engine.run_dir}")
        log.info(f"model folder: {Path(engine.run_dir) / 'model'}")
    return 0


if __name__ == "__main__":
    run_cli(main)
