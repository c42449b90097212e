"""What every `python -m cvengine.X` entry point shares: user errors as one line, exit code 2."""
from __future__ import annotations

import logging
import sys
from typing import Callable

from cvengine.errors import CvengineError


def run_cli(main: Callable[[list[str]], int | None], argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    _quiet_libraries()
    try:
        code = main(sys.argv[1:] if argv is None else argv)
    except CvengineError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


def _quiet_libraries() -> None:
    """Per-file progress bars of transformers drown the training log."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass
    # Accelerate logs every file of every checkpoint it saves.
    logging.getLogger("accelerate").setLevel(logging.WARNING)
