"""What every `python -m cvengine.X` entry point shares: user errors as one line, exit code 2."""
from __future__ import annotations

import logging
import sys
from typing import Callable

from cvengine.errors import CvengineError


def run_cli(main: Callable[[list[str]], int | None], argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        code = main(sys.argv[1:] if argv is None else argv)
    except CvengineError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
