"""The real HTTP server (python -m cvengine.serve) on 127.0.0.1: good requests answer predictions,
malformed ones 400 with a message, and the server keeps serving."""
from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(trained_detection_run, tmp_path_factory):
    import httpx
    import mlflow

    from cvengine.serving.pyfunc import log_pyfunc_model

    store = tmp_path_factory.mktemp("serving")
    uri = f"sqlite:///{store}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("serving")
    with mlflow.start_run():
        info = log_pyfunc_model(trained_detection_run / "model", name="pyfunc")
    mlflow.set_tracking_uri(None)
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": uri}
    # A limit of 40,000 pixels: the demo images pass, the 300x300 probe below does not.
    process = subprocess.Popen([sys.executable, "-m", "cvengine.serve", "--model", info.model_uri, "--port", str(port), "--max-pixels", "40000"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited: {process.stdout.read()[-2000:]}")
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail("server did not answer /health within 120 s")
    yield base
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


def _png_b64(height: int, width: int) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), 90, np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _post(base: str, body: dict):
    import httpx

    return httpx.post(base + "/invocations", json=body, timeout=60)


def test_good_and_bad_requests(server, trained_detection_run, demo_detection):
    from cvengine.data.images import read_image
    from cvengine.serving.predictor import Predictor

    files = sorted((demo_detection / "val" / "images").glob("*.jpg"))[:2]
    images_b64 = [base64.b64encode(f.read_bytes()).decode() for f in files]
    good = _post(server, {"dataframe_split": {"columns": ["image"], "data": [[b] for b in images_b64]}})
    assert good.status_code == 200, good.text
    answers = good.json()["predictions"]
    expected = Predictor(trained_detection_run / "model", device="cpu").predict([read_image(str(f)) for f in files])
    assert len(answers) == 2
    for answer, exp in zip(answers, expected):
        np.testing.assert_allclose(answer["scores"], exp["scores"], atol=1e-5)
        np.testing.assert_allclose(answer["boxes_xyxy"], exp["boxes_xyxy_abs"], atol=1e-4)
        assert set(answer["labels"]) <= {str(d) for d in range(10)}

    bad_requests = {
        "bad base64": ({"dataframe_split": {"columns": ["image"], "data": [["not base64 @@"]]}}, "not valid base64"),
        "not an image": ({"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(b"plain text").decode()]]}}, "not a readable image"),
        "wrong column": ({"dataframe_split": {"columns": ["picture"], "data": [[images_b64[0]]]}}, "image"),
        "too many pixels": ({"dataframe_split": {"columns": ["image"], "data": [[_png_b64(300, 300)]]}}, "above the limit of 40000 pixels"),
    }
    for what, (body, message) in bad_requests.items():
        response = _post(server, body)
        assert response.status_code == 400, (what, response.status_code, response.text[:300])
        assert message in response.json()["message"], (what, response.text[:300])

    # Still serving, and the threshold parameter filters.
    again = _post(server, {"inputs": {"image": images_b64[:1]}, "params": {"threshold": 0.5}})
    assert again.status_code == 200
    assert all(s >= 0.5 for s in again.json()["predictions"][0]["scores"])
