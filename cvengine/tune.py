"""`python -m cvengine.tune RECIPE [key=value …]`: hyper-parameter search over the recipe's [tune.space].

Prints a table of the trials and writes the best trial's recipe, which `python -m cvengine.run` takes
as is, to `<output_dir>/<experiment>/tune-<time>/best_recipe.toml`.
"""
from __future__ import annotations

import argparse

from cvengine.cli import run_cli


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m cvengine.tune", description="Search hyper-parameters with Ray Tune over the keys in the recipe's [tune.space].")
    parser.add_argument("recipe", help="TOML recipe file with a [tune] section")
    parser.add_argument("overrides", nargs="*", help="dotted overrides such as tune.num_samples=16 train.max_epochs=5")
    args = parser.parse_intermixed_args(argv)

    from cvengine.distributed.tune import tune_recipe
    from cvengine.recipe import load_recipe

    summary = tune_recipe(load_recipe(args.recipe, overrides=args.overrides))
    print(summary.table())
    print(f"train it: python -m cvengine.run {summary.best_recipe_path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
