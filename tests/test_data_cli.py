"""`python -m cvengine.data demo|check|stats` on real files: the demo generator, the validator, the statistics."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import json
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from cvengine.data.validate import check_dataset
from cvengine.data.demo import load_digit_scans, make_demo, scan_pools
from cvengine.data.stats import dataset_stats
from cvengine.errors import DataError

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args, check_rc=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "cvengine.data", *map(str, args)], capture_output=True, text=True, env=env, cwd=REPO, timeout=120
    )
    if check_rc is not None:
        assert proc.returncode == check_rc, f"rc={proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    proc = run_cli("demo", out, "--task", "detection", "--seed", "0", check_rc=0)
    assert "train: 64 images" in proc.stdout and "val: 16 images" in proc.stdout
    return out


@pytest.fixture
def corrupt_copy(demo_dir, tmp_path):
    """A writable copy of the demo train split: (annotations path, images dir, loaded json)."""
    split = tmp_path / "train"
    shutil.copytree(demo_dir / "train", split)
    ann = split / "annotations.json"
    return ann, split / "images", json.loads(ann.read_text())


def write_json(path, data):
    path.write_text(json.dumps(data))


# ---------------------------------------------------------------- demo


def test_demo_is_deterministic_and_seed_dependent(demo_dir, tmp_path):
    again = make_demo(tmp_path / "again", seed=0)
    other = make_demo(tmp_path / "other", seed=1)
    for split in ("train", "val"):
        reference = (demo_dir / split / "annotations.json").read_bytes()
        assert Path(again["splits"][split]["annotations"]).read_bytes() == reference
        assert Path(other["splits"][split]["annotations"]).read_bytes() != reference
    for name in ("000001.jpg", "000064.jpg"):
        a = np.asarray(Image.open(demo_dir / "train" / "images" / name))
        b = np.asarray(Image.open(tmp_path / "again" / "train" / "images" / name))
        assert np.array_equal(a, b)
    assert again["splits"]["train"]["num_images"] == 64 and again["splits"]["val"]["num_images"] == 16


def test_demo_is_fast(tmp_path):
    start = time.perf_counter()
    make_demo(tmp_path / "timed", seed=3, num_train=64, num_val=16)
    assert time.perf_counter() - start < 2.0


def test_demo_train_and_val_use_disjoint_scans():
    ink, classes = load_digit_scans()
    assert ink.shape == (1797, 8, 8) and set(classes.tolist()) == set(range(10))
    pools = scan_pools(0, len(ink))
    assert not set(pools["train"].tolist()) & set(pools["val"].tolist())
    assert len(pools["train"]) + len(pools["val"]) == len(ink)


def test_demo_annotations_are_coco_with_tight_boxes_and_masks(demo_dir):
    data = json.loads((demo_dir / "train" / "annotations.json").read_text())
    assert [c["id"] for c in data["categories"]] == list(range(1, 11))
    assert [c["name"] for c in data["categories"]] == [str(d) for d in range(10)]
    per_image = Counter(a["image_id"] for a in data["annotations"])
    assert set(per_image) == {im["id"] for im in data["images"]}
    assert 1 <= min(per_image.values()) and max(per_image.values()) <= 4
    assert len({a["category_id"] for a in data["annotations"]}) >= 8  # 160 digits cover (nearly) every class

    images = {im["id"]: im for im in data["images"]}
    for ann in data["annotations"]:
        assert ann["iscrowd"] == 0 and isinstance(ann["segmentation"]["counts"], str)
        rle = dict(ann["segmentation"], counts=ann["segmentation"]["counts"].encode())
        mask = mask_utils.decode(rle).astype(bool)
        im = images[ann["image_id"]]
        assert mask.shape == (im["height"], im["width"])
        assert ann["area"] == int(mask.sum()) > 0
        assert mask_utils.toBbox(rle).tolist() == ann["bbox"]
        x, y, w, h = ann["bbox"]
        assert 8 <= h <= 64 and 1 <= w <= 64
        # Tight: every edge row/column of the box holds ink, nothing outside it does.
        inside = mask[y : y + h, x : x + w]
        assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
        assert inside.sum() == mask.sum()


def test_demo_boxes_sit_on_the_ink_in_the_pixels(demo_dir):
    data = json.loads((demo_dir / "train" / "annotations.json").read_text())
    all_ink = {}
    for ann in data["annotations"]:
        rle = dict(ann["segmentation"], counts=ann["segmentation"]["counts"].encode())
        all_ink[ann["image_id"]] = all_ink.get(ann["image_id"], False) | mask_utils.decode(rle).astype(bool)
    for ann in data["annotations"][:12]:
        image = np.asarray(Image.open(demo_dir / "train" / "images" / f"{ann['image_id']:06d}.jpg"), dtype=np.float64)
        rle = dict(ann["segmentation"], counts=ann["segmentation"]["counts"].encode())
        mask = mask_utils.decode(rle).astype(bool)
        x, y, w, h = ann["bbox"]
        # Background: a 4-pixel ring around the box, without anybody's ink.
        ring = np.zeros_like(mask)
        ring[max(y - 4, 0) : y + h + 4, max(x - 4, 0) : x + w + 4] = True
        ring[y : y + h, x : x + w] = False
        ring &= ~all_ink[ann["image_id"]]
        ink_rgb, bg_rgb = np.median(image[mask], axis=0), np.median(image[ring], axis=0)
        assert np.linalg.norm(ink_rgb - bg_rgb) > 40, (ann["id"], ink_rgb, bg_rgb)
        # Each edge of the box touches ink that looks like the digit, not like the background.
        for edge in (mask[y, x : x + w], mask[y + h - 1, x : x + w], mask[y : y + h, x], mask[y : y + h, x + w - 1]):
            assert edge.any()
        edge_pixels = np.concatenate(
            [
                image[y, x : x + w][mask[y, x : x + w]],
                image[y + h - 1, x : x + w][mask[y + h - 1, x : x + w]],
                image[y : y + h, x][mask[y : y + h, x]],
                image[y : y + h, x + w - 1][mask[y : y + h, x + w - 1]],
            ]
        )
        edge_rgb = np.median(edge_pixels, axis=0)
        assert np.linalg.norm(edge_rgb - ink_rgb) < np.linalg.norm(edge_rgb - bg_rgb), ann["id"]


def test_demo_rejects_unknown_task(tmp_path):
    from cvengine.data.demo import SPLIT_WRITERS

    supported = ", ".join(sorted(SPLIT_WRITERS))
    assert "detection" in supported and "classification" in supported
    with pytest.raises(DataError, match=f"supported: {supported}$"):
        make_demo(tmp_path / "x", task="panoptic")
    proc = run_cli("demo", tmp_path / "y", "--task", "panoptic", check_rc=2)
    assert proc.stderr.strip().splitlines() == [f"error: demo task 'panoptic' is not supported; supported: {supported}"]
    assert not (tmp_path / "y").exists()


# ---------------------------------------------------------------- check


def test_check_clean_demo_exits_0(demo_dir):
    ann, images = demo_dir / "train" / "annotations.json", demo_dir / "train" / "images"
    proc = run_cli("check", ann, "--images", images, check_rc=0)
    assert "0 errors, 0 warnings" in proc.stdout and "64 images (64 decoded)" in proc.stdout
    report = check_dataset(ann, images)
    assert report.ok and report.errors == [] and report.warnings == []
    assert (report.num_images, report.num_images_decoded, report.num_categories) == (64, 64, 10)


def error_lines(proc):
    return [line for line in proc.stdout.splitlines() if line.startswith("error: ")]


def test_check_truncated_jpeg(corrupt_copy):
    ann, images, _ = corrupt_copy
    jpg = images / "000003.jpg"
    jpg.write_bytes(jpg.read_bytes()[: jpg.stat().st_size // 2])
    proc = run_cli("check", ann, "--images", images, check_rc=1)
    [line] = error_lines(proc)
    assert f"{ann}: image id 3:" in line and str(jpg) in line and "truncated" in line


def test_check_missing_image(corrupt_copy):
    ann, images, _ = corrupt_copy
    (images / "000005.jpg").unlink()
    proc = run_cli("check", ann, "--images", images, check_rc=1)
    [line] = error_lines(proc)
    assert f"{ann}: image id 5: image file not found: {images / '000005.jpg'}" in line


def test_check_unknown_category(corrupt_copy):
    ann, images, data = corrupt_copy
    data["annotations"][6]["category_id"] = 99
    write_json(ann, data)
    proc = run_cli("check", ann, "--images", images, check_rc=1)
    aid = data["annotations"][6]["id"]
    assert any(f"{ann}: annotation id {aid}: category_id 99 is not in 'categories'" in line for line in error_lines(proc))


def test_check_duplicate_image_id(corrupt_copy):
    ann, images, data = corrupt_copy
    data["images"][1]["id"] = data["images"][0]["id"]
    write_json(ann, data)
    proc = run_cli("check", ann, "--images", images, check_rc=1)
    assert f"error: {ann}: image id 1: appears more than once ('000001.jpg' and '000002.jpg')" in proc.stdout
    # The second image's annotations now point at an id no image record has.
    assert any("image_id 2 is not in 'images'" in line for line in error_lines(proc))


def test_check_negative_width_and_other_record_errors(corrupt_copy):
    ann, images, data = corrupt_copy
    anns = data["annotations"]
    x, y, w, h = anns[2]["bbox"]
    anns[2]["bbox"] = [x, y, -w, h]
    anns[3]["id"] = anns[4]["id"]
    anns[5]["segmentation"] = [[1, 2, 3, 4, 5]]
    anns[7]["segmentation"]["size"] = [10, 10]
    anns[8]["bbox"] = [500, 500, 4, 4]
    data["images"][9]["width"] = 200
    write_json(ann, data)
    report = check_dataset(ann, images)
    assert not report.ok
    expected = [
        f"{ann}: annotation id {anns[2]['id']}: bbox [{x}, {y}, {-w}, {h}] has negative width",
        f"{ann}: annotation id {anns[4]['id']}: appears more than once",
        f"{ann}: annotation id {anns[5]['id']}: polygon 0 has 5 coordinates",
        f"{ann}: annotation id {anns[7]['id']}: RLE size [10, 10] differs from the image's [height, width] [160, 160]",
        f"{ann}: annotation id {anns[8]['id']}: bbox [500, 500, 4, 4] lies outside the 160x160 image",
        f"{ann}: image id 10: {images / '000010.jpg'} is 160x160 (width x height, EXIF orientation applied) but the record says 200x160",
    ]
    for text in expected:
        assert any(line.startswith(text) for line in report.errors), (text, report.errors)
    proc = run_cli("check", ann, "--images", images, check_rc=1)
    assert len(error_lines(proc)) == len(report.errors) and "FAILED" in proc.stdout


def test_check_malformed_json(corrupt_copy):
    ann, images, _ = corrupt_copy
    ann.write_text('{"images": [\n  {"id": 1, "file_name": "000001.jpg"}\n  {"id": 2}\n]}')
    proc = run_cli("check", ann, "--images", images, check_rc=1)
    assert error_lines(proc) == [f"error: {ann}: not valid JSON: Expecting ',' delimiter at line 3, column 3"]


def test_check_warnings_alone_exit_0(corrupt_copy):
    ann, images, data = corrupt_copy
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 4]
    x, y, w, h = data["annotations"][0]["bbox"]
    data["annotations"][0]["bbox"] = [x, y, 170 - x, h]
    write_json(ann, data)
    proc = run_cli("check", ann, "--images", images, check_rc=0)
    warnings = [line for line in proc.stdout.splitlines() if line.startswith("warning: ")]
    assert any(f"{ann}: image id 4: '000004.jpg' has no annotations" in line for line in warnings)
    assert any(f"annotation id {data['annotations'][0]['id']}: bbox" in line and "extends past" in line for line in warnings)
    assert "0 errors, 2 warnings" in proc.stdout


def test_check_bad_paths_exit_2(tmp_path, demo_dir):
    proc = run_cli("check", tmp_path / "missing.json", "--images", tmp_path, check_rc=2)
    assert proc.stderr.strip().splitlines() == [f"error: annotations file not found: {tmp_path / 'missing.json'}"]
    proc = run_cli("check", demo_dir / "train" / "annotations.json", "--images", tmp_path / "nope", check_rc=2)
    assert proc.stderr.strip().splitlines() == [f"error: images folder not found: {tmp_path / 'nope'}"]
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------- stats


def test_stats_json_matches_the_file(demo_dir):
    ann = demo_dir / "train" / "annotations.json"
    data = json.loads(ann.read_text())
    stats = json.loads(run_cli("stats", ann, "--json", check_rc=0).stdout)
    assert stats == dataset_stats(ann) | {"annotations_path": str(ann)}
    assert stats["num_images"] == len(data["images"]) == 64
    assert stats["num_annotations"] == stats["num_instances"] == len(data["annotations"])
    assert stats["num_crowd"] == 0 and stats["num_degenerate"] == 0
    counts = Counter(a["category_id"] for a in data["annotations"])
    images_with = {cid: len({a["image_id"] for a in data["annotations"] if a["category_id"] == cid}) for cid in counts}
    assert {c["id"]: c["count"] for c in stats["classes"]} == {cid: counts.get(cid, 0) for cid in range(1, 11)}
    assert {c["id"]: c["images"] for c in stats["classes"]} == {cid: images_with.get(cid, 0) for cid in range(1, 11)}
    assert [c["name"] for c in stats["classes"]] == [str(d) for d in range(10)]
    widths = [a["bbox"][2] for a in data["annotations"]]
    heights = [a["bbox"][3] for a in data["annotations"]]
    assert (stats["box_width"]["min"], stats["box_width"]["max"]) == (min(widths), max(widths))
    assert (stats["box_height"]["min"], stats["box_height"]["max"]) == (min(heights), max(heights))
    assert stats["box_width"]["median"] == pytest.approx(float(np.median(widths)))
    areas = [a["area"] for a in data["annotations"]]
    buckets = stats["size_buckets"]
    assert buckets["by"] == "annotation area"
    assert buckets["small"] == sum(a < 32**2 for a in areas) and buckets["large"] == sum(a >= 96**2 for a in areas)
    assert buckets["small"] + buckets["medium"] + buckets["large"] == len(areas)
    assert stats["image_sizes"] == [{"width": 160, "height": 160, "count": 64}]
    assert stats["num_images_without_annotations"] == 0


def test_stats_counts_crowd_empty_images_and_text(corrupt_copy):
    ann, _, data = corrupt_copy
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] not in (2, 3)]
    data["annotations"][0]["iscrowd"] = 1
    write_json(ann, data)
    stats = dataset_stats(ann)
    assert stats["num_images_without_annotations"] == 2
    assert stats["num_crowd"] == 1 and stats["num_instances"] == len(data["annotations"]) - 1
    text = run_cli("stats", ann, check_rc=0).stdout
    assert "64  (2 without annotations)" in text and "1 crowd" in text


def test_stats_detects_the_layout_as_check_does(tmp_path):
    """A COCO classification file (no bbox) and an ImageFolder give class counts, not an error."""
    coco = make_demo(tmp_path / "coco", task="classification", num_train=12, num_val=2)["splits"]["train"]
    data = json.loads(Path(coco["annotations"]).read_text())
    data["annotations"] = [{"id": a["id"], "image_id": a["image_id"], "category_id": a["category_id"]} for a in data["annotations"]]
    write_json(Path(coco["annotations"]), data)
    stats = json.loads(run_cli("stats", coco["annotations"], "--json", check_rc=0).stdout)
    assert stats["layout"] == "coco-classification" and stats["num_images"] == len(data["images"]) == 12
    per_class = Counter(a["category_id"] for a in data["annotations"])
    assert {c["id"]: c["images"] for c in stats["classes"]} == {c["id"]: per_class.get(c["id"], 0) for c in data["categories"]}
    unused = len(data["categories"]) - len(per_class)
    out = run_cli("check", coco["annotations"], "--images", coco["images"], check_rc=0).stdout
    assert f"0 errors, {unused} warnings" in out and (unused == 0 or f"{unused}  warning: unused category" in out)

    folders = make_demo(tmp_path / "folders", task="classification", num_train=12, num_val=2, layout="imagefolder")["splits"]["train"]
    images = Path(folders["images"])
    stats = dataset_stats(images)
    assert stats["layout"] == "image-folder" and stats["num_images"] == len(list(images.glob("*/*.jpg"))) == 12
    assert {c["name"]: c["images"] for c in stats["classes"]} == {d.name: len(list(d.glob("*.jpg"))) for d in images.iterdir() if d.is_dir()}
    text = run_cli("stats", images, check_rc=0).stdout
    assert "image-folder" in text and "12  (0 without a class, 0 with several)" in text


def test_stats_bad_path_exit_2(tmp_path):
    proc = run_cli("stats", tmp_path / "none.json", check_rc=2)
    assert proc.stderr.strip().splitlines() == [f"error: annotations file not found: {tmp_path / 'none.json'}"]


def test_check_uses_the_exif_oriented_size_and_caps_lines_per_kind(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 40x20, shown rotated by 90 degrees: 20x40
    for i in range(1, 5):
        Image.new("RGB", (40, 20), (90, 120, 30)).save(images / f"{i}.jpg", exif=exif)
    records = [{"id": i, "file_name": f"{i}.jpg", "width": 40, "height": 20} for i in range(1, 5)]
    records[0].update(width=20, height=40)  # the size the loader sees: correct
    ann = tmp_path / "annotations.json"
    annotations = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10], "area": 100, "iscrowd": 0}]
    write_json(ann, {"images": records, "annotations": annotations, "categories": [{"id": 1, "name": "a"}]})
    report = check_dataset(ann, images)
    assert len(report.errors) == 3
    assert report.errors[0] == (
        f"{ann}: image id 2: {images / '2.jpg'} is 20x40 (width x height, EXIF orientation applied) but the record"
        " says 40x20 (swapped: EXIF orientation rotates this file)"
    )
    lines = report.lines(max_per_kind=2)
    assert lines[:2] == [f"error: {e}" for e in report.errors[:2]]
    assert lines[2] == "error: ... and 1 more 'image size mismatch' errors"
    proc = run_cli("check", ann, "--max-per-kind", "0", check_rc=1)  # --images defaults to images/ beside the file
    assert len(error_lines(proc)) == 3 and "3  error: image size mismatch" in proc.stdout


def test_demo_refuses_a_non_empty_folder_without_overwrite(tmp_path):
    out = tmp_path / "demo"
    run_cli("demo", out, "--num-train", "8", "--num-val", "2", check_rc=0)
    (out / "tiny-model").mkdir()
    (out / "tiny-model" / "config.json").write_text("{}")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    proc = run_cli("demo", out, "--num-train", "4", "--num-val", "2", check_rc=2)
    assert "--overwrite" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    # --overwrite replaces the demo's own folders, leaves no stale image behind, and keeps the rest.
    run_cli("demo", out, "--num-train", "4", "--num-val", "2", "--overwrite", check_rc=0)
    listed = {im["file_name"] for im in json.loads((out / "train" / "annotations.json").read_text())["images"]}
    assert {p.relative_to(out / "train" / "images").as_posix() for p in (out / "train" / "images").rglob("*.jpg")} == listed
    assert len(listed) == 4 and (out / "tiny-model" / "config.json").exists()


def test_demo_semantic_ink_classes_are_the_digit_masks_as_one_class(tmp_path):
    """`--classes ink`: the same canvases as the ten-digit demo, every digit's ink as class 1 'digit'."""
    digits = make_demo(tmp_path / "digits", task="semantic_segmentation", num_train=6, num_val=2, canvas=(64, 64))
    made = run_cli("demo", tmp_path / "ink", "--task", "semantic_segmentation", "--classes", "ink", "--canvas", "64", "--num-train", "6", "--num-val", "2", check_rc=0)
    assert "64x64 images, 1 category)" in made.stdout
    for split in ("train", "val"):
        ink_json = json.loads((tmp_path / "ink" / split / "annotations.json").read_text())
        digits_json = json.loads(Path(digits["splits"][split]["annotations"]).read_text())
        assert ink_json["categories"] == [{"id": 1, "name": "digit", "supercategory": "digit"}]
        assert [a["category_id"] for a in ink_json["annotations"]] == [1] * len(digits_json["annotations"])
        assert [{**a, "category_id": 1} for a in digits_json["annotations"]] == ink_json["annotations"]
        assert json.loads((tmp_path / "ink" / split / "labels.json").read_text()) == {"0": "background", "1": "digit"}
        for png in sorted((tmp_path / "digits" / split / "masks").glob("*.png")):
            ten = np.asarray(Image.open(png))
            one = np.asarray(Image.open(tmp_path / "ink" / split / "masks" / png.name))
            assert ten.shape == (64, 64) and np.array_equal(one, (ten > 0).astype(np.uint8))
            image = png.name.replace(".png", ".jpg")
            assert (tmp_path / "ink" / split / "images" / image).read_bytes() == (tmp_path / "digits" / split / "images" / image).read_bytes()
    proc = run_cli("demo", tmp_path / "det", "--task", "detection", "--classes", "ink", check_rc=2)
    assert proc.stderr.strip().splitlines() == ["error: demo classes 'ink' are not available for detection; available: digits"]
    assert not (tmp_path / "det").exists()
