"""What every `python -m cvengine.X` entry point shares: user errors as one line, exit code 2."""
from __future__ import annotations

import errno
import logging
import sys
from typing import Callable

from cvengine.errors import CvengineError


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, `docker stop`, a cancelled job), raised like Ctrl-C so that the same
    clean-up runs: the MLflow run ends KILLED, loader workers stop, checkpoints stay as they were."""


_terminated = False
_SQLITE_STORAGE = ("SQLITE_FULL", "SQLITE_IOERR", "SQLITE_READONLY", "SQLITE_CANTOPEN")
_USER_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EEXIST, errno.EISDIR, errno.ENOENT}


def _terminate(signum, frame):
    global _terminated
    _terminated = True
    raise Terminated()


def _drop_lost_termination(unraisable, _default=sys.unraisablehook) -> None:
    # A Terminated the interpreter had to swallow is raised again by raise_if_terminated: not news.
    if not isinstance(unraisable.exc_value, Terminated):
        _default(unraisable)


def _quiet_after_termination(exc_type, exc_value, tb, _default=sys.excepthook) -> None:
    # After SIGTERM the process is shutting down: helper threads of multiprocessing (the resource
    # sharer that hands tensors to loader workers) report their closed connections through
    # sys.excepthook; the one line "terminated" is what the user gets.
    if not _terminated:
        _default(exc_type, exc_value, tb)


def raise_if_terminated() -> None:
    """Raise Terminated if SIGTERM came in: an exception raised by the signal handler is lost when
    the signal lands in certain places (e.g. logging's fork hooks while loader workers start), so
    the training loop also checks after every batch."""
    if _terminated:
        raise Terminated()


def run_cli(main: Callable[[list[str]], int | None], argv: list[str] | None = None) -> None:
    import signal

    # Our INFO lines; the libraries' at WARNING (the ONNX exporter's optimiser alone logs a line per
    # initializer and per constant-folding decision at INFO).
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("cvengine").setLevel(logging.INFO)
    _quiet_libraries()
    signal.signal(signal.SIGTERM, _terminate)
    sys.unraisablehook = _drop_lost_termination
    sys.excepthook = _quiet_after_termination
    try:
        code = main(sys.argv[1:] if argv is None else argv)
    except CvengineError as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        sys.exit(2)
    except Exception as err:
        # Disk full, a read-only or missing folder, a file where a folder belongs: the user's to fix.
        text = storage_error(err)
        if text is None:
            raise
        print(f"error: {text}; earlier runs and checkpoints are untouched", file=sys.stderr)
        sys.exit(2)
    except BrokenPipeError:
        # Output piped into `head` and closed early: not an error of ours.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except Terminated:
        print("terminated", file=sys.stderr)
        sys.exit(143)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


def storage_error(err: BaseException) -> str | None:
    """The line for an error caused by the storage (full, read-only, a file in the way), found in
    the exception or what caused it (MLflow wraps SQLAlchemy, which wraps sqlite3); None otherwise."""
    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, OSError) and err.errno in _USER_ERRNOS:
            where = " -> ".join(str(f) for f in (err.filename, err.filename2) if f)
            return f"{where or 'writing'}: {err.strerror or err}"
        if type(err).__module__ == "sqlite3" and getattr(err, "sqlite_errorname", "").startswith(_SQLITE_STORAGE):
            return f"the MLflow sqlite store: {err} ({err.sqlite_errorname}: disk full or not writable)"
        err = getattr(err, "orig", None) or err.__cause__ or err.__context__
        seen += 1
    return None


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
    # MLflow logs a store error with its traceback before raising it; the raised error gets our line.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    # Accelerate logs every file of every checkpoint it saves.
    logging.getLogger("accelerate").setLevel(logging.WARNING)
