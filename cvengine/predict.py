"""`python -m cvengine.predict --model PATH|runs:/…|models:/NAME@ALIAS INPUTS… --output DIR`

Runs a trained model (a run folder, its model/ folder, an ONNX export folder or an MLflow model URI)
on image files, folders, globs and videos; writes `predictions.json` in the task's standard format
(detection: COCO results with ORIGINAL category ids, plus `file_name`; classification: top-5 per
image; semantic segmentation: PNG label maps indexed by the json; instance segmentation: COCO results
with RLE masks; panoptic segmentation: COCO panoptic PNGs + json) and the rendered images.
"""
from __future__ import annotations

import argparse
import glob
import logging
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from cvengine.cli import run_cli
from cvengine.errors import CvengineError, DataError

log = logging.getLogger("cvengine")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}


def _hidden(relative: Path) -> bool:
    """True for files under dot-folders or dot-files (`.ipynb_checkpoints/`, `._x.jpg` from macOS)."""
    return any(part.startswith(".") for part in relative.parts)


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files, folders (their images and videos, sorted, sub-folders included) and globs -> files, in order.

    Folders are searched recursively because COCO `file_name`s often carry sub-folders
    (`images/train/0001.jpg`): a data set's own images folder must be predictable as it is.
    """
    files: list[Path] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*")
                if p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES and p.is_file() and not _hidden(p.relative_to(path))
            )
            if not found:
                raise DataError(f"{path}: no images or videos in this folder or its sub-folders")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        elif any(ch in text for ch in "*?["):
            found = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
            if not found:
                raise DataError(f"{text}: the pattern matches no files")
            files.extend(found)
        else:
            raise DataError(f"input not found: {text}")
    return files


def video_frames(path: Path, fps: float) -> Iterator[tuple[str, np.ndarray]]:
    """(name, frame RGB) about `fps` times per second of video; names are `video.mp4@<ms>ms`."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise DataError(f"cannot open video {path} (not a video, or a codec OpenCV lacks)")
    try:
        native_fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
        # Every frame when the rate is unknown or lower than asked for.
        step = max(1, int(round(native_fps / fps))) if native_fps > 0 and fps > 0 else 1
        index = 0
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            if index % step == 0:
                ms = int(round(1000 * index / native_fps)) if native_fps > 0 else index
                yield f"{path.name}@{ms:08d}ms", cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            index += 1
    finally:
        capture.release()


def read_inputs(files: list[Path], fps: float) -> Iterator[tuple[str, np.ndarray]]:
    from cvengine.data.images import read_image

    for path in files:
        if path.suffix.lower() in VIDEO_SUFFIXES:
            yield from video_frames(path, fps)
        else:
            yield str(path), read_image(str(path))


def count_items(files: list[Path], fps: float) -> int | None:
    """Number of images + sampled video frames, for the progress bar (None if a video has no count)."""
    import cv2

    total = 0
    for path in files:
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            total += 1
            continue
        capture = cv2.VideoCapture(str(path))
        frames, native_fps = capture.get(cv2.CAP_PROP_FRAME_COUNT), capture.get(cv2.CAP_PROP_FPS)
        capture.release()
        if frames <= 0:
            return None
        step = max(1, int(round(native_fps / fps))) if native_fps > 0 and fps > 0 else 1
        total += int(np.ceil(frames / step))
    return total


def rendered_name(name: str, used: set) -> str:
    base = Path(name.replace("@", "_")).name
    stem = Path(base).stem if "@" not in name else base.replace(".", "_")
    candidate, n = f"{stem}.jpg", 1
    while candidate in used:
        candidate, n = f"{stem}-{n}.jpg", n + 1
    used.add(candidate)
    return candidate


def image_records(task, predictor, image_id: int, name: str, image: np.ndarray, prediction: dict, threshold: float, png_folder: Path,
                  rendered_path: Path | None, draw_threshold: float) -> list:
    """One image's rows of predictions.json (and its rendered overlay when `rendered_path` is given):
    the same code for the single-process loop and the Ray Data actors."""
    prediction = task.filter_prediction(prediction, threshold)
    if rendered_path is not None:
        from PIL import Image

        drawn = task.render(image, task.filter_prediction(prediction, max(threshold, draw_threshold)), predictor.class_names)
        Image.fromarray(drawn).save(rendered_path, quality=90)
    return task.prediction_records(prediction, image_id, name, predictor.label_map, png_folder)


def predict(model: str, inputs: list[str], output: str, threshold: float = 0.0, batch_size: int = 8, fps: float = 1.0, render: bool = True,
            draw_threshold: float = 0.3, device: str | None = None, backend: str = "local", actors: int | None = None) -> Path:
    """Predict on `inputs`; write `output/predictions.json` and `output/rendered/`. Returns the json path.

    backend "ray": the same Predictor in Ray Data actors (one per GPU, else `actors` CPU actors)."""
    from tqdm import tqdm

    from cvengine.serving.predictor import Predictor

    started = time.perf_counter()
    files = expand_inputs(inputs)
    out_dir = Path(output)
    rendered_dir = out_dir / "rendered"
    rendered_dir.mkdir(parents=True, exist_ok=True)
    # Tasks whose predictions are images (semantic and panoptic PNGs) write them here, beside the json.
    png_folder = out_dir / "predictions"
    if backend == "ray":
        from cvengine.distributed.batch import predict_with_ray

        path = predict_with_ray(model, files, out_dir, threshold=threshold, batch_size=batch_size, render=render, draw_threshold=draw_threshold, actors=actors)
        _log_rate(len(files), started)
        return path
    predictor = Predictor.load(model, device=device, batch_size=batch_size)
    task = predictor.task
    records, used, count = [], set(), 0
    stream = predictor.predict_stream(read_inputs(files, fps))
    for image_id, (name, image, prediction) in enumerate(tqdm(stream, total=count_items(files, fps), unit="img", desc="predict", disable=None), start=1):
        rendered = rendered_dir / rendered_name(name, used) if render else None
        records.extend(image_records(task, predictor, image_id, name, image, prediction, threshold, png_folder, rendered, draw_threshold))
        count = image_id
    path = out_dir / "predictions.json"
    task.write_predictions(path, records, predictor.label_map)
    _log_rate(count, started)
    return path


def _log_rate(count: int, started: float) -> None:
    elapsed = time.perf_counter() - started
    log.info(f"predicted {count} images in {elapsed:.1f} s ({count / elapsed:.1f} images/s, model loading included)")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m cvengine.predict", description="Predict with a trained model on images, folders, globs and videos.")
    parser.add_argument("inputs", nargs="+", help="image files, folders, glob patterns (quoted) or video files")
    parser.add_argument("--model", required=True, help="run folder, its model/ folder, an ONNX export folder, runs:/RUN_ID/model or models:/NAME@ALIAS")
    parser.add_argument("--output", required=True, help="folder for predictions.json and rendered/")
    parser.add_argument("--threshold", type=float, default=0.0, help="keep predictions scoring at least this (default 0: all, as COCO evaluation expects)")
    parser.add_argument("--draw-threshold", type=float, default=0.3, help="draw predictions scoring at least this (default 0.3)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--fps", type=float, default=1.0, help="frames per second sampled from videos (default 1)")
    parser.add_argument("--no-render", action="store_true", help="write predictions.json only")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: a GPU when present)")
    parser.add_argument(
        "--backend", choices=("local", "ray"), default="local",
        help="local: this process (default); ray: Ray Data actors on the cluster RAY_ADDRESS names, else a local one (images only)",
    )
    parser.add_argument("--actors", type=int, default=None, help="--backend ray: number of actors (default: one per GPU; without GPUs, one per CPU)")
    args = parser.parse_args(argv)
    if args.batch_size <= 0:
        raise CvengineError("--batch-size must be > 0")
    if args.actors is not None and args.actors <= 0:
        raise CvengineError("--actors must be > 0")
    path = predict(
        args.model, args.inputs, args.output, args.threshold, args.batch_size, args.fps, not args.no_render, args.draw_threshold, args.device,
        backend=args.backend, actors=args.actors,
    )
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
