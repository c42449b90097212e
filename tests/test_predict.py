"""cvengine.predict on real files: its predictions.json scores exactly as cvengine.evaluate does."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_module


@pytest.fixture(scope="module")
def evaluated(trained_detection_run):
    from cvengine.evaluate import evaluate_run

    metrics, run_dir = evaluate_run(str(trained_detection_run), "best", "val")
    return metrics, run_dir


def test_predict_matches_evaluate(trained_detection_run, demo_detection, evaluated, tmp_path):
    from cvengine.data.coco import read_json
    from cvengine.metrics.coco import evaluate_coco

    metrics, run_dir = evaluated
    out = tmp_path / "pred"
    result = run_module("cvengine.predict", "--model", trained_detection_run, demo_detection / "val" / "images", "--output", out, "--batch-size", "3")
    assert result.returncode == 0, result.stderr
    records = json.loads((out / "predictions.json").read_text())
    gt = read_json(demo_detection / "val" / "annotations.json")
    ids = {im["file_name"]: im["id"] for im in gt["images"]}
    assert {Path(r["file_name"]).name for r in records} == set(ids)
    # Original COCO category ids (the demo's are 1..10), never contiguous labels.
    assert {r["category_id"] for r in records} <= {c["id"] for c in gt["categories"]}
    for r in records:
        r["image_id"] = ids[Path(r["file_name"]).name]
    ours = evaluate_coco(gt, records, iou_type="bbox")
    assert metrics["val/map_50"] > 0, "the trained model should find some digits"
    for key in ("map", "map_50", "map_75", "mar_100"):
        assert ours[key] == pytest.approx(metrics[f"val/{key}"], abs=1e-6), key
    assert len(list((out / "rendered").glob("*.jpg"))) == len(ids)
    assert (run_dir / "report" / "report.html").exists()


def test_predict_video_frames_and_glob(trained_detection_run, demo_detection, tmp_path):
    import cv2

    from cvengine.data.images import read_image

    frame = read_image(str(sorted((demo_detection / "val" / "images").glob("*.jpg"))[0]))
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (frame.shape[1], frame.shape[0]))
    if not writer.isOpened():
        pytest.skip("OpenCV here cannot write mp4v video")
    for _ in range(20):  # 2 s at 10 fps
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    out = tmp_path / "pred"
    pattern = str(demo_detection / "val" / "images" / "00000[12].jpg")
    result = run_module("cvengine.predict", "--model", trained_detection_run / "model", video, pattern, "--output", out, "--fps", "2", "--no-render")
    assert result.returncode == 0, result.stderr
    names = sorted({r["file_name"] for r in json.loads((out / "predictions.json").read_text())})
    # 2 fps from a 10 fps clip of 20 frames: frames 0, 5, 10, 15.
    assert [n for n in names if n.startswith("clip.mp4@")] == ["clip.mp4@00000000ms", "clip.mp4@00000500ms", "clip.mp4@00001000ms", "clip.mp4@00001500ms"]
    assert sum(not n.startswith("clip") for n in names) == 2


def test_predict_bad_input_is_one_line(trained_detection_run, tmp_path):
    result = run_module("cvengine.predict", "--model", trained_detection_run, tmp_path / "missing.jpg", "--output", tmp_path / "o")
    assert result.returncode == 2
    assert "input not found" in result.stderr and "Traceback" not in result.stderr


def test_predict_folder_finds_images_in_sub_folders(tmp_path):
    from PIL import Image

    from cvengine.predict import expand_inputs

    # A data set's own images/ folder whose COCO file_names carry sub-folders, plus files to skip.
    for rel in ("images/a/1.jpg", "images/a/b/2.png", "images/0.jpg", "images/.ipynb_checkpoints/0.jpg", "images/a/notes.txt"):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".txt"):
            path.write_text("not an image")
        else:
            Image.new("RGB", (4, 4)).save(path)
    found = [p.relative_to(tmp_path / "images").as_posix() for p in expand_inputs([str(tmp_path / "images")])]
    assert found == ["0.jpg", "a/1.jpg", "a/b/2.png"]
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(Exception, match="no images or videos"):
        expand_inputs([str(tmp_path / "empty")])
