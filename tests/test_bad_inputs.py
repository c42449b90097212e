"""Bad-input corpus: every user-caused error gives one line naming the file, record or key, exit 2,
no traceback, and leaves earlier runs byte-identical."""
from __future__ import annotations

import json
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomli_w

from conftest import REPO, detection_recipe, run_module
from test_engine import _tree_digest


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny_model, demo_detection):
    """An earlier finished run, and the broken inputs of each case."""
    root = tmp_path_factory.mktemp("corpus")
    model = Path(tiny_model("detection", "detr"))
    recipe = detection_recipe(demo_detection, model, root / "runs", max_epochs=1)
    path = root / "recipe.toml"
    path.write_text(tomli_w.dumps(recipe))
    result = run_module("cvengine.run", path, "--no-progress", "tracking.run_name=earlier", cwd=root)
    assert result.returncode == 0, result.stderr[-2000:]

    (root / "folder.toml").mkdir()
    (root / "binary.toml").write_bytes(bytes(range(256)))
    (root / "a_file").write_text("not a folder")
    empty = root / "empty"
    shutil.copytree(demo_detection, empty)
    coco = json.loads((empty / "train" / "annotations.json").read_text())
    (empty / "train" / "annotations.json").write_text(json.dumps({**coco, "images": [], "annotations": []}))
    bomb = root / "bomb"
    shutil.copytree(demo_detection, bomb)
    coco = json.loads((bomb / "train" / "annotations.json").read_text())
    record = coco["images"][2]
    write_bomb_png(bomb / "train" / "images" / record["file_name"], 8000, 8000)
    record["width"] = record["height"] = 8000
    (bomb / "train" / "annotations.json").write_text(json.dumps(coco))
    shutil.copytree(model, root / "no_weights")
    (root / "no_weights" / "model.safetensors").unlink()
    shutil.copytree(model, root / "truncated")
    weights = (model / "model.safetensors").read_bytes()
    (root / "truncated" / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    return root


def write_bomb_png(path: Path, width: int, height: int) -> None:
    """A valid grayscale PNG of width x height black pixels: ~60 KB on disk for 8000 x 8000, which
    would decode to 192 MB as RGB."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    compressor = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + one byte per pixel
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CASES = {
    # case: (recipe file, overrides, texts the error line must hold)
    "recipe_is_a_folder": ("folder.toml", [], ["folder.toml", "is a folder"]),
    "recipe_is_binary": ("binary.toml", [], ["binary.toml", "not a text file"]),
    "lr_nan": ("recipe.toml", ["train.lr=nan"], ["train.lr=nan", "'lr' must be a finite number"]),
    "lr_inf": ("recipe.toml", ["train.lr=inf"], ["'lr' must be a finite number"]),
    "warmup_ratio_inf": ("recipe.toml", ["train.warmup_ratio=inf"], ["'warmup_ratio' must be a finite number"]),
    "grad_clip_nan": ("recipe.toml", ["train.grad_clip=nan"], ["'grad_clip' must be a finite number"]),
    "seed_negative": ("recipe.toml", ["train.seed=-1"], ["'seed' must be in [0, 2**32)"]),
    "seed_too_large": ("recipe.toml", [f"train.seed={2**32}"], ["'seed' must be in [0, 2**32)"]),
    "run_name_dotdot": ("recipe.toml", ["tracking.run_name=../../escape"], ["tracking.run_name = '../../escape'"]),
    "run_name_absolute": ("recipe.toml", ["tracking.run_name={root}/abs"], ["tracking.run_name", "absolute"]),
    "sqlite_in_missing_folder": ("recipe.toml", ["tracking.uri=sqlite:///{root}/missing/dir/mlflow.db"], ["{root}/missing/dir does not exist"]),
    "output_dir_is_a_file": ("recipe.toml", ["train.output_dir={root}/a_file"], ["{root}/a_file", "Not a directory"]),
    "empty_images_list": ("recipe.toml", ["data.root={root}/empty"], ["empty/train/annotations.json lists no images"]),
    "decompression_bomb": ("recipe.toml", ["data.root={root}/bomb"], ["8000x8000 = 64000000 pixels", "above data.max_image_pixels = 40000000"]),
    "missing_weights": ("recipe.toml", ["model.name={root}/no_weights"], ["no_weights", "weights could not be loaded"]),
    "truncated_weights": ("recipe.toml", ["model.name={root}/truncated"], ["truncated", "weights could not be loaded"]),
    "dead_tracking_server": ("recipe.toml", ["tracking.uri=http://127.0.0.1:{port}"], ["tracking.uri", "no tracking server answers"]),
    "disk_full": ("recipe.toml", [], ["disk full or not writable"]),
}


def _limit_file_size():
    # Writes past 64 KB fail with EFBIG, as on a full disk (the sqlite store is already larger).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64_000, 64_000))


@pytest.mark.parametrize("case", list(CASES))
def test_user_error_gives_one_line_and_keeps_earlier_runs(case, corpus):
    recipe, overrides, expected = CASES[case]
    fill = {"root": corpus, "port": _free_port()}
    overrides = [o.format(**fill) for o in overrides]
    before = _tree_digest(corpus / "runs" / "tests" / "earlier")
    db = (corpus / "runs" / "mlflow.db").read_bytes()
    # The option before the overrides: `cvengine.run R --no-progress k=v` must parse.
    cmd = [sys.executable, "-m", "cvengine.run", str(corpus / recipe), "--no-progress", *overrides]
    started = time.perf_counter()
    result = subprocess.run(cmd, cwd=corpus, capture_output=True, text=True, timeout=300, env={**__import__("os").environ, "PYTHONPATH": str(REPO)}, preexec_fn=_limit_file_size if case == "disk_full" else None)
    elapsed = time.perf_counter() - started
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-2000:]
    for text in expected:
        assert text.format(**fill) in errors[0], errors[0]
    assert _tree_digest(corpus / "runs" / "tests" / "earlier") == before
    if case != "disk_full":
        assert (corpus / "runs" / "mlflow.db").read_bytes() == db or "tracking" not in case
    assert not (corpus / "escape").exists() and not (corpus / "abs").exists() and not (corpus / "missing").exists()
    if case == "dead_tracking_server":
        assert elapsed < 60  # connect timeout 10 s, plus start-up


def test_image_size_limit_is_checked_from_the_header(tmp_path):
    from PIL import Image

    from cvengine.data.images import read_image
    from cvengine.data.validate import image_header_size
    from cvengine.errors import DataError

    path = tmp_path / "bomb.png"
    write_bomb_png(path, 8000, 8000)
    with Image.open(path) as image:  # an independent reader agrees on the header size
        assert image.size == (8000, 8000)
    for read in (read_image, image_header_size):
        with pytest.raises(DataError, match="bomb.png is 8000x8000 = 64000000 pixels, above data.max_image_pixels = 1000000"):
            read(str(path), 1_000_000)
    assert image_header_size(str(path), 64_000_000) == (8000, 8000)
