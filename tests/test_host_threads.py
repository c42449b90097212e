"""Host threads sized to the machine: torch's intra-op threads plus the loader workers fill the
cores without oversubscribing them, unless the user chose a count with OMP_NUM_THREADS."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, detection_recipe

PROBE = """
import json, os, sys, torch
from cvengine.engine.loop import Engine
from cvengine.recipe import load_recipe
os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:int(sys.argv[2])]))
recipe = load_recipe(json.loads(sys.argv[1]))
engine = Engine(recipe, tracker=None, progress=False)
print(json.dumps({"threads": torch.get_num_threads(), "sized": engine.host_threads}))
"""


@pytest.mark.parametrize("workers, processes", [(2, 1), (0, 1), (1, 2), (8, 1)])
def test_torch_threads_plus_workers_fit_the_cores(workers, processes, monkeypatch):
    import torch

    from cvengine.engine.devices import size_host_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = len(os.sched_getaffinity(0))
    try:
        threads = size_host_threads(workers, processes)
        assert threads == torch.get_num_threads() == max(1, cores // processes - workers)
    finally:
        torch.set_num_threads(1)


def test_the_engine_sizes_its_threads(tiny_model, demo_detection, tmp_path):
    """A run as a user starts it (no OMP_NUM_THREADS), on two cores with no loader worker: 2 threads."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 cores")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["PYTHONPATH"] = str(REPO)
    for cores, workers, expected in ((2, 0, 2),):
        recipe = detection_recipe(demo_detection, tiny_model("detection", "rt_detr"), tmp_path)
        recipe["data"]["num_workers"] = workers
        out = subprocess.run([sys.executable, "-c", PROBE, json.dumps(recipe), str(cores)], env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout.strip().splitlines()[-1]) == {"threads": expected, "sized": expected}


def test_omp_num_threads_of_the_user_is_kept(tiny_model, demo_detection, tmp_path):
    recipe = detection_recipe(demo_detection, tiny_model("detection", "rt_detr"), tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cores = len(os.sched_getaffinity(0))
    out = subprocess.run([sys.executable, "-c", PROBE, json.dumps(recipe), str(cores)], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"threads": 1, "sized": None}
