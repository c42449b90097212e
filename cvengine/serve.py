"""`python -m cvengine.serve --model URI [--host 127.0.0.1] [--port 5000] [--max-pixels N]`

Serves a cvengine MLflow pyfunc model (models:/NAME@ALIAS, runs:/…, a local MLflow model folder) with
MLflow's scoring server: POST /invocations, GET /health. Requests:

    {"dataframe_split": {"columns": ["image"], "data": [["<base64 JPEG/PNG>"], …]}}
    {"inputs": {"image": ["<base64>", …]}, "params": {"threshold": 0.5}}

Malformed requests (bad base64, not an image, no `image` column) and images above --max-pixels answer
400 with a message; a POST without Content-Type 415; a body above --max-body-bytes, more rows than
--max-rows or more pixels together than --max-request-pixels 413; a body that stalls for
--body-timeout seconds 408. Idle connections close after --idle-timeout seconds. The server keeps
serving.
"""
from __future__ import annotations

import argparse
import logging
import os

from cvengine.cli import run_cli
from cvengine.errors import CvengineError

log = logging.getLogger("cvengine")


def build_app(model_uri: str):
    """MLflow's scoring server (a FastAPI app) around the loaded pyfunc model."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server

    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except (MlflowException, OSError) as err:
        first = (getattr(err, "message", None) or str(err)).strip().splitlines()[0]
        raise CvengineError(f"cannot load model {model_uri}: {first} (for models:/ and runs:/ URIs pass --tracking-uri sqlite:///<output_dir>/mlflow.db, the store that holds it)") from None
    return scoring_server.init(model)


def main(argv: list[str]) -> int:
    from cvengine.serving.limits import LimitedApp
    from cvengine.serving.pyfunc_model import DEFAULT_MAX_PIXELS, DEFAULT_MAX_REQUEST_PIXELS, DEFAULT_MAX_ROWS, MAX_PIXELS_ENV, MAX_REQUEST_PIXELS_ENV, MAX_ROWS_ENV

    parser = argparse.ArgumentParser(prog="python -m cvengine.serve", description="Serve a cvengine MLflow model over HTTP (/invocations, /health).")
    parser.add_argument("--model", required=True, help="models:/NAME@ALIAS, runs:/RUN_ID/pyfunc, or a local MLflow model folder")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help=f"refuse images with more pixels (default {DEFAULT_MAX_PIXELS})")
    parser.add_argument("--max-rows", type=int, default=DEFAULT_MAX_ROWS, help=f"refuse requests with more rows (default {DEFAULT_MAX_ROWS})")
    parser.add_argument("--max-request-pixels", type=int, default=DEFAULT_MAX_REQUEST_PIXELS, help=f"refuse requests whose images hold more pixels together (default {DEFAULT_MAX_REQUEST_PIXELS})")
    parser.add_argument("--max-body-bytes", type=int, default=64 << 20, help="refuse larger request bodies (default 64 MiB)")
    parser.add_argument("--body-timeout", type=float, default=30.0, help="seconds a request body may stall (default 30)")
    parser.add_argument("--idle-timeout", type=int, default=5, help="seconds an idle keep-alive connection stays open (default 5)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI for models:/ and runs:/ URIs (default: MLFLOW_TRACKING_URI, else ./runs/mlflow.db when present)")
    args = parser.parse_args(argv)
    for option in ("max_pixels", "max_rows", "max_request_pixels", "max_body_bytes", "body_timeout", "idle_timeout"):
        if getattr(args, option) <= 0:
            raise CvengineError(f"--{option.replace('_', '-')} must be > 0")
    os.environ[MAX_PIXELS_ENV] = str(args.max_pixels)
    os.environ[MAX_ROWS_ENV] = str(args.max_rows)
    os.environ[MAX_REQUEST_PIXELS_ENV] = str(args.max_request_pixels)
    from cvengine.engine.tracking import store_for_uris

    store = store_for_uris(args.tracking_uri)
    if store:
        os.environ["MLFLOW_TRACKING_URI"] = store
    import uvicorn

    app = LimitedApp(build_app(args.model), max_body_bytes=args.max_body_bytes, body_timeout_s=args.body_timeout)
    log.info(f"serving {args.model} on http://{args.host}:{args.port} (POST /invocations, GET /health)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_keep_alive=args.idle_timeout)
    return 0


if __name__ == "__main__":
    run_cli(main)
