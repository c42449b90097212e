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
def server_process(trained_detection_run, tmp_path_factory):
    """(base URL, server process) of `python -m cvengine.serve` with small request limits."""
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
    # A limit of 40,000 pixels: the demo images pass, the 300x300 probe below does not. Request
    # limits small enough for the abuse test to reach them quickly.
    limits = ["--max-pixels", "40000", "--max-rows", "8", "--max-request-pixels", "100000", "--max-body-bytes", "2000000", "--body-timeout", "2", "--idle-timeout", "2"]
    process = subprocess.Popen([sys.executable, "-m", "cvengine.serve", "--model", info.model_uri, "--port", str(port), *limits], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
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
    yield base, process
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="module")
def server(server_process):
    return server_process[0]


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


def _raw_exchange(base: str, request: bytes, stall_s: float = 0.0, read_timeout: float = 15.0) -> bytes:
    """Send raw HTTP bytes (optionally stalling after them) and read until the server closes."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=read_timeout) as conn:
        conn.sendall(request)
        time.sleep(stall_s)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    return answer


def _rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.timeout(120)
def test_abusive_requests_get_4xx_and_the_server_keeps_serving(server_process, demo_detection):
    """Bounded: 9 abusive requests, each answered within seconds; the server answers 4xx, keeps
    serving, and its RSS stays under 1.5 GB."""
    import httpx

    base, process = server_process
    small = base64.b64encode(sorted((demo_detection / "val" / "images").glob("*.jpg"))[0].read_bytes()).decode()
    rows = lambda cells: {"dataframe_split": {"columns": ["image"], "data": [[c] for c in cells]}}  # noqa: E731

    too_big = httpx.post(base + "/invocations", content=b"x" * 2_500_000, headers={"Content-Type": "application/json"}, timeout=30)
    assert too_big.status_code == 413 and "above the limit of 2000000 bytes" in too_big.json()["message"]
    announced = _raw_exchange(base, b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n")
    assert announced.startswith(b"HTTP/1.1 413")
    many = _post(base, rows([small] * 9))
    assert many.status_code == 413 and "9 rows in one request is above the limit of 8" in many.json()["message"], many.text[:1500]
    # Five 200x200 images: each under --max-pixels 40000, together 200000 > --max-request-pixels.
    heavy = _post(base, rows([_png_b64(200, 200)] * 5))
    assert heavy.status_code == 413 and "200000 pixels together" in heavy.json()["message"]
    untyped = httpx.post(base + "/invocations", content=b'{"inputs": {"image": []}}', headers={"Content-Type": ""}, timeout=30)
    assert untyped.status_code == 415
    # A long garbage cell: the error names the row, and does not send the input back.
    garbage = "A" * 200_001
    echoed = _post(base, rows([garbage]))
    assert echoed.status_code == 400 and len(echoed.content) < 1500 and garbage[:1500] not in echoed.text
    # A slow client: headers and part of the body, then silence past --body-timeout 2 s.
    slow = _raw_exchange(base, b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"inp", stall_s=0)
    assert slow.startswith(b"HTTP/1.1 408"), slow[:200]
    # An idle keep-alive connection is closed after --idle-timeout 2 s.
    started = time.monotonic()
    idle = _raw_exchange(base, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert idle.startswith(b"HTTP/1.1 200") and time.monotonic() - started < 10

    good = _post(base, rows([small]))
    assert good.status_code == 200 and len(good.json()["predictions"]) == 1
    assert process.poll() is None and _rss_mb(process.pid) < 1500
