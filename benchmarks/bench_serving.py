"""Latency and throughput of the HTTP server (python -m cvengine.serve, MLflow's scoring server)
against the bare model on the same images.

    python benchmarks/bench_serving.py                 # tiny random RT-DETR, 160x160 JPEGs
    python benchmarks/bench_serving.py --family detr --requests 200

(a) bare: `Predictor.predict([image])` in this process, one image at a time (decode, resize,
    normalise, forward, post-process): the floor any server adds to.
(b) server: a child process serving the same model logged as a pyfunc model in a temporary sqlite
    store; one base64 JPEG per request, sent by 1, 4 and 16 concurrent clients (threads with their own
    HTTP connection). Latency is per request, end to end.
Reported: p50/p99 latency and images/s for each; ratios server/bare for p50 latency and throughput.
"""
from __future__ import annotations

import argparse
import base64
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def _percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load_clients(url: str, bodies: list[dict], concurrency: int) -> tuple[list[float], float]:
    import httpx

    latencies: list[float] = []
    lock = threading.Lock()
    next_index = [0]

    def worker():
        with httpx.Client(timeout=120) as client:
            while True:
                with lock:
                    i = next_index[0]
                    next_index[0] += 1
                if i >= len(bodies):
                    return
                start = time.perf_counter()
                response = client.post(url, json=bodies[i])
                elapsed = time.perf_counter() - start
                if response.status_code != 200:
                    raise RuntimeError(f"server answered {response.status_code}: {response.text[:200]}")
                with lock:
                    latencies.append(elapsed)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, len(bodies) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="rt_detr")
    parser.add_argument("--requests", type=int, default=96, help="requests per concurrency level")
    args = parser.parse_args()

    import httpx
    import mlflow
    import torch

    from cvengine.adapters.tiny import create_tiny
    from cvengine.data.demo import make_demo
    from cvengine.data.images import read_image
    from cvengine.serving.predictor import Predictor
    from cvengine.serving.pyfunc import log_pyfunc_model

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        make_demo(os.path.join(tmp, "demo"), task="detection", seed=0, num_train=1, num_val=16)
        folder = os.path.join(tmp, "demo", "val", "images")
        files = sorted(os.path.join(folder, f) for f in os.listdir(folder))
        model_dir = create_tiny("detection", args.family, os.path.join(tmp, "model"))
        uri = f"sqlite:///{tmp}/mlflow.db"
        mlflow.set_tracking_uri(uri)
        with mlflow.start_run():
            info = log_pyfunc_model(model_dir, name="pyfunc")

        # (a) bare model, same images, one at a time.
        predictor = Predictor(model_dir, device="cpu")
        encoded = [open(f, "rb").read() for f in files]
        predictor.predict([read_image(files[0])])  # warm-up
        bare = []
        start = time.perf_counter()
        from cvengine.serving.pyfunc_model import decode_image

        for i in range(args.requests):
            t = time.perf_counter()
            predictor.predict([decode_image(encoded[i % len(encoded)], 0, 10**8)])
            bare.append(time.perf_counter() - t)
        bare_rate = args.requests / (time.perf_counter() - start)

        # (b) the server.
        port = _free_port()
        env = {**os.environ, "PYTHONPATH": REPO, "MLFLOW_TRACKING_URI": uri}
        server = subprocess.Popen([sys.executable, "-m", "cvengine.serve", "--model", info.model_uri, "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    if httpx.get(base + "/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.3)
            bodies = [{"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(encoded[i % len(encoded)]).decode()]]}} for i in range(args.requests)]
            _load_clients(base + "/invocations", bodies[:8], 1)  # warm-up
            print(f"{args.family} tiny, {len(files)} JPEGs of 160x160, {args.requests} requests per level, CPU, 1 torch thread")
            print(f"{'':12} {'p50 ms':>8} {'p99 ms':>8} {'images/s':>9}")
            bare_p50 = statistics.median(bare)
            print(f"{'bare model':12} {1000 * bare_p50:8.2f} {1000 * _percentile(bare, 99):8.2f} {bare_rate:9.1f}")
            ratios = {}
            for concurrency in (1, 4, 16):
                latencies, rate = _load_clients(base + "/invocations", bodies, concurrency)
                ratios[concurrency] = rate / bare_rate
                p50 = statistics.median(latencies)
                print(f"{'server c=' + str(concurrency):12} {1000 * p50:8.2f} {1000 * _percentile(latencies, 99):8.2f} {rate:9.1f}   ratio p50 {p50 / bare_p50:5.2f}  ratio throughput {rate / bare_rate:5.2f}")
        finally:
            server.terminate()
            server.wait(timeout=30)
        print(f"ratio server/bare throughput: {ratios[1]:.2f} (c=1), {ratios[4]:.2f} (c=4), {ratios[16]:.2f} (c=16)")


if __name__ == "__main__":
    main()
