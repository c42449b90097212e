"""benchmarks/gpu_suite.py --smoke: the GPU suite's every phase (engine and raw loop on resident
batches, compiled engine, engine from JPEG files, with data.decode on the device where it can be) runs on
CPU with tiny models, so it cannot rot."""
from __future__ import annotations

import json

from conftest import REPO, run_module


def test_gpu_suite_smoke_prints_every_figure(tmp_path):
    result = run_module("benchmarks.gpu_suite", "--smoke", "--models", "vit-b16,detr-r50,mask2former-swin-s", "--decode-models", "detr-r50", "--workdir", tmp_path, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    figures = {(r["model"], r["figure"]): r for r in rows}
    assert set(figures) == {("vit-b16", "engine_vs_raw"), ("vit-b16", "compiled_vs_raw_eager"), ("vit-b16", "disk_vs_resident"), ("detr-r50", "engine_vs_raw"), ("detr-r50", "disk_vs_resident"), ("detr-r50", "gpu_decode_vs_cpu_decode"), ("mask2former-swin-s", "engine_vs_raw"), ("mask2former-swin-s", "disk_vs_resident")}
    for r in rows:
        assert r["value"] > 0 and r["device"] == "cpu"
    # Each ratio is its two measured rates' quotient.
    vit = figures[("vit-b16", "engine_vs_raw")]
    assert abs(vit["value"] - vit["engine_images_per_s"] / vit["raw_images_per_s"]) < 0.01
    assert figures[("vit-b16", "compiled_vs_raw_eager")]["compiled"] is True
    # data.decode = "auto" without a CUDA device decodes in the loader workers.
    assert figures[("detr-r50", "gpu_decode_vs_cpu_decode")]["decoded_on"] == "loader workers"
    assert "| vit-b16 |" in result.stdout and "| mask2former-swin-s |" in result.stdout
