"""`python -m cvengine.run RECIPE [key=value …]`: train, validating every `train.eval_every_epochs` and
keeping the best checkpoint, the exported model folder and metrics.json in the run folder."""
from __future__ import annotations

import argparse
import logging

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
    if recipe.train.resume == "last":
        recipe = with_saved_recipe(recipe, args.overrides)
    if recipe.distributed.backend == "ray":
        from cvengine.distributed.ray import fit_with_ray, ray_cluster

        with ray_cluster(recipe.distributed):
            result = fit_with_ray(recipe)
        log.info(f"Ray Train run finished; run folder: {result.get('run_dir')}")
        return 0
    # The engine's Progress hook prints the start-up line, one line per evaluation, the table and the
    # closing line (best metrics, elapsed time, images/s, model folder).
    Engine(recipe, progress=not args.no_progress).fit()
    return 0


def with_saved_recipe(recipe, overrides: list[str]):
    """train.resume = 'last': the run being continued trains on with its own saved recipe.toml (the
    overrides it was started with included), plus this command's overrides; those that change the
    saved recipe are named in one line. The recipe file's current values are not used."""
    from cvengine.engine.checkpoint import find_run_dir, release_run_dir
    from cvengine.recipe import flatten, load_recipe, recipe_to_dict

    run_dir, _ = find_run_dir(recipe, model_family="")
    # The engine that trains takes the folder's lock itself, possibly in another process (a Ray worker).
    release_run_dir(run_dir)
    saved_file = run_dir / "recipe.toml"
    if not saved_file.is_file():
        return recipe
    saved = flatten(recipe_to_dict(load_recipe(saved_file)))
    kept = [o for o in overrides if o.split("=", 1)[0].strip() != "train.resume"]
    resumed = load_recipe(saved_file, overrides=[*kept, "train.resume=last"])
    changed = [f"{k} {saved.get(k)!r} -> {v!r}" for k, v in flatten(recipe_to_dict(resumed)).items() if k != "train.resume" and saved.get(k) != v]
    log.info(f"resuming {run_dir} with its saved recipe.toml" + (f"; changed by overrides: {', '.join(changed)}" if changed else ""))
    return resumed


if __name__ == "__main__":
    run_cli(main)
