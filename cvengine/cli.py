"""What every `python -m cvengine.X` entry point shares: user errors as one line, exit code 2."""
from __future__ import annotations

import logging
import sys
from typing import Callable

from cvengine.errors import CvengineError


def run_cli(main: Callable[[list[str]], int | None], argv: list[str] | None = None) -> None:
    # Our INFO lines; the libraries' at WARNING (the ONNX exporter's optimiser alone logs a line per
    # initializer and per constant-folding decision at INFO).
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("cvengine").setLevel(logging.INFO)
    _quiet_libraries()
    try:
        code = main(sys.argv[1:] if argv is None else argv)
    except CvengineError as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        sys.exit(2)
    except BrokenPipeError:
        # Output piped into `head` and closed early: not an error of ours.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


def one_line(err: BaseException) -> str:
    """The user-facing line of an error. A DataLoader worker re-raises our errors with the worker's
    traceback folded into the message; the last line holds the original message."""
    text = str(err).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if last.startswith(("cvengine.errors.", "DataError", "RecipeError")) and ": " in last else last
    return text


def _quiet_libraries() -> None:
    """Per-file progress bars and notices of transformers drown the training log. Environment
    variables (read when transformers is imported) rather than an import here: the data CLIs stay fast."""
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # MLflow announces every table and experiment it creates at INFO.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    # Accelerate logs every file of every checkpoint it saves.
    logging.getLogger("accelerate").setLevel(logging.WARNING)
