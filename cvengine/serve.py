"""`python -m cvengine.serve --model URI [--host 127.0.0.1] [--port 5000] [--max-pixels N]`

Serves a cvengine MLflow pyfunc model (models:/NAME@ALIAS, runs:/…, a local MLflow model folder) with
MLflow's scoring server: POST /invocations, GET /health. Requests:

    {"dataframe_split": {"columns": ["image"], "data": [["<base64 JPEG/PNG>"], …]}}
    {"inputs": {"image": ["<base64>", …]}, "params": {"threshold": 0.5}}

Malformed requests (bad base64, not an image, no `image` column) and images above --max-pixels answer
400 with a message; the server keeps serving.
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
    from cvengine.serving.pyfunc_model import DEFAULT_MAX_PIXELS, MAX_PIXELS_ENV

    parser = argparse.ArgumentParser(prog="python -m cvengine.serve", description="Serve a cvengine MLflow model over HTTP (/invocations, /health).")
    parser.add_argument("--model", required=True, help="models:/NAME@ALIAS, runs:/RUN_ID/pyfunc, or a local MLflow model folder")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help=f"refuse images with more pixels (default {DEFAULT_MAX_PIXELS})")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI for models:/ and runs:/ URIs (default: MLFLOW_TRACKING_URI, else ./runs/mlflow.db when present)")
    args = parser.parse_args(argv)
    if args.max_pixels <= 0:
        raise CvengineError("--max-pixels must be > 0")
    os.environ[MAX_PIXELS_ENV] = str(args.max_pixels)
    from cvengine.engine.tracking import store_for_uris

    store = store_for_uris(args.tracking_uri)
    if store:
        os.environ["MLFLOW_TRACKING_URI"] = store
    import uvicorn

    app = build_app(args.model)
    log.info(f"serving {args.model} on http://{args.host}:{args.port} (POST /invocations, GET /health)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    run_cli(main)
