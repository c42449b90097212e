"""`python -m cvengine.models` lists the supported model families per task;
`python -m cvengine.models --coverage` prints, per task, every family of the installed transformers'
Auto mappings as supported or refused (with the reason);
`python -m cvengine.models create FAMILY DIR` writes a small random-init checkpoint folder of a
family (for training from scratch on small images, the demo job and tests)."""
from __future__ import annotations

import argparse

from cvengine.cli import run_cli


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m cvengine.models", description=__doc__)
    parser.add_argument("--coverage", action="store_true", help="every family of transformers' Auto mappings: supported or refused, and why")
    sub = parser.add_subparsers(dest="command")
    create = sub.add_parser("create", help="write a small random-init checkpoint folder of a family")
    create.add_argument("family", help="config.model_type, e.g. rt_detr (see `python -m cvengine.models`)")
    create.add_argument("out_dir")
    create.add_argument("--task", default="detection")
    create.add_argument("--num-labels", type=int, default=10)
    args = parser.parse_args(argv)

    from cvengine.adapters import ADAPTERS

    if args.command == "create":
        from cvengine.adapters.tiny import create_tiny

        path = create_tiny(args.task, args.family, args.out_dir, num_labels=args.num_labels)
        print(f"wrote a random-init {args.family} checkpoint folder for {args.task}: {path}")
        return 0
    if args.coverage:
        return print_coverage()
    for task, families in ADAPTERS.items():
        print(f"{task}:")
        for model_type, family in sorted(families.items()):
            print(f"  {model_type:<20} {family.adapter.__name__}")
    return 0


def print_coverage() -> int:
    """Exit status 1 when a family of the mappings is neither supported nor refused."""
    import transformers

    from cvengine.adapters.refused import coverage

    table = coverage()
    print(f"transformers {transformers.__version__}")
    missing = 0
    for task, rows in table.items():
        supported = sum(status == "supported" for _, status, _ in rows)
        refused = sum(status == "refused" for _, status, _ in rows)
        print(f"{task}: {supported} supported, {refused} refused")
        for model_type, status, detail in rows:
            print(f"  {model_type:<24} {status:<10} {detail}")
        missing += sum(status == "MISSING" for _, status, _ in rows)
    return 1 if missing else 0


if __name__ == "__main__":
    run_cli(main)
