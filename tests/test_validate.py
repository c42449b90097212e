"""The one validator (cvengine.data.validate) behind `python -m cvengine.data check` and training start:
a corpus of bad inputs, each a real COCO file with real JPEGs, checked for the exact line `data check`
prints and for the DataError training raises; real external data sets that must stay free of errors;
grouped warnings; the other layouts; header-only reading; panoptic statistics against numpy."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import json
import math
import shlex
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cvengine.data.__main__ import main as data_main
from cvengine.data.stats import dataset_stats
from cvengine.data.validate import (
    check,
    check_dataset,
    check_panoptic,
    raise_if_errors,
    validate_for_training,
)
from cvengine.errors import DataError

REPO = Path(__file__).resolve().parents[1]
EXTERNAL = REPO.parent / "shared" / "external-data"
needs_external = pytest.mark.skipif(not EXTERNAL.is_dir(), reason="../shared/external-data is not beside this checkout")
W, H = 64, 48  # every corpus image is 64x48 (width x height) as the loader sees it


def write_jpeg(path: Path, size=(W, H), orientation: int | None = None, seed: int = 0) -> None:
    """A real JPEG of `size` (width, height) as stored; `orientation` sets the EXIF tag."""
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, exif=exif, quality=90)


def clean_coco() -> dict:
    return {
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": W, "height": H} for i in (1, 2, 3)],
        "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [4, 4, 20, 16], "area": 320, "iscrowd": 0} for i in (1, 2, 3)],
        "categories": [{"id": 1, "name": "cat"}],
    }


@pytest.fixture
def dataset(tmp_path):
    """(annotations path, images dir, writer): a clean 3-image COCO set; writer(data) writes the json."""
    images = tmp_path / "images"
    for i in (1, 2, 3):
        write_jpeg(images / f"{i}.jpg", seed=i)
    ann = tmp_path / "annotations.json"

    def write(data: dict) -> None:
        ann.write_text(json.dumps(data))  # NaN and Infinity are written as JSON's extensions, as Python reads them

    write(clean_coco())
    return ann, images, write


def run_check(capsys, *argv) -> tuple[int, list[str]]:
    """`python -m cvengine.data check ARGV` in this process: exit code and printed lines."""
    rc = data_main(["check", *map(str, argv)])
    return rc, capsys.readouterr().out.splitlines()


def errors_of(lines):
    return [line for line in lines if line.startswith("error: ")]


def warnings_of(lines):
    return [line for line in lines if line.startswith("warning: ")]


def _set(section, position, key, value):
    def mutate(data, root):
        data[section][position][key] = value

    return mutate


def _exif_swapped(data, root):
    # Stored 64x48 with orientation 6 (turned 90 degrees when shown): the loader sees 48x64; the
    # record keeps the stored 64x48, so every box would land in the wrong place.
    write_jpeg(root / "images" / "2.jpg", size=(W, H), orientation=6, seed=2)


def _absolute_file_name(data, root):
    outside = root / "elsewhere" / "x.jpg"
    write_jpeg(outside)
    data["images"][0]["file_name"] = str(outside)


def _duplicate_image_id(data, root):
    data["images"][2]["id"] = 2
    data["annotations"][2]["image_id"] = 2


def _duplicate_category_id(data, root):
    data["categories"].append({"id": 1, "name": "dog"})


# (case, mutation, expected line without "error: {annotations path}: ", given the images folder)
CORPUS = [
    ("bbox NaN", _set("annotations", 0, "bbox", [4, math.nan, 20, 16]),
     "annotation id 1: bbox [4, NaN, 20, 16] has a value that is not a finite number: y is NaN"),
    ("bbox inf", _set("annotations", 0, "bbox", [4, 4, math.inf, 16]),
     "annotation id 1: bbox [4, 4, Infinity, 16] has a value that is not a finite number: width is Infinity"),
    ("bbox negative", _set("annotations", 0, "bbox", [4, 4, 20, -16]),
     "annotation id 1: bbox [4, 4, 20, -16] has negative height"),
    ("bbox string", _set("annotations", 0, "bbox", [4, "4", 20, 16]),
     "annotation id 1: bbox [4, \"4\", 20, 16] has a value that is not a finite number: y is '4' (a string; write numbers without quotes)"),
    ("bbox boolean", _set("annotations", 0, "bbox", [True, 4, 20, 16]),
     "annotation id 1: bbox [true, 4, 20, 16] has a value that is not a finite number: x is true (a boolean)"),
    ("category_id 1.7", _set("annotations", 0, "category_id", 1.7),
     "annotation id 1: category_id 1.7 is not an integer; use the integer 'id' of one of 'categories' (training would truncate it to 1)"),
    ("category_id string", _set("annotations", 0, "category_id", "1"),
     "annotation id 1: category_id '1' is a string; write the number 1 without quotes"),
    ("category_id float", _set("annotations", 0, "category_id", 1.0),
     "annotation id 1: category_id 1.0 is a float; write the integer 1"),
    ("image_id string", _set("annotations", 1, "image_id", "2"),
     "annotation id 2: image_id '2' is a string; write the number 2 without quotes"),
    ("iscrowd string", _set("annotations", 0, "iscrowd", "no"),
     "annotation id 1: iscrowd 'no' must be 0 or 1 (a string, which training would read as crowd); write 0 for an object, 1 for a crowd region"),
    ("iscrowd boolean", _set("annotations", 0, "iscrowd", True),
     "annotation id 1: iscrowd true must be 0 or 1; write 1, not the boolean"),
    ("EXIF swap", _exif_swapped,
     "image id 2: {images}/2.jpg is 48x64 (width x height, EXIF orientation applied) but the record says 64x48 (swapped: EXIF orientation rotates this file)"),
    ("size differs", _set("images", 2, "width", 80),
     "image id 3: {images}/3.jpg is 64x48 (width x height, EXIF orientation applied) but the record says 80x48"),
    ("file_name ..", _set("images", 0, "file_name", "../../etc/x.jpg"),
     "image id 1: file_name '../../etc/x.jpg' points outside the images folder {images}; give a path relative to that folder (sub-folders are fine, '..' and absolute paths are not)"),
    ("file_name absolute", _absolute_file_name,
     "image id 1: file_name '{root}/elsewhere/x.jpg' points outside the images folder {images}; give a path relative to that folder (sub-folders are fine, '..' and absolute paths are not)"),
    ("duplicate image id", _duplicate_image_id, "image id 2: appears more than once ('2.jpg' and '3.jpg')"),
    ("duplicate annotation id", _set("annotations", 2, "id", 2), "annotation id 2: appears more than once"),
    ("duplicate category id", _duplicate_category_id, "category id 1: appears more than once"),
    ("unknown image id", _set("annotations", 2, "image_id", 99), "annotation id 3: image_id 99 is not in 'images'"),
    ("unknown category id", _set("annotations", 2, "category_id", 7), "annotation id 3: category_id 7 is not in 'categories' (known: [1])"),
]


@pytest.mark.parametrize("mutate, expected", [c[1:] for c in CORPUS], ids=[c[0] for c in CORPUS])
def test_bad_input_is_one_exact_line_in_check_and_fails_training(dataset, capsys, mutate, expected):
    ann, images, write = dataset
    data = clean_coco()
    mutate(data, ann.parent)
    write(data)
    message = f"{ann}: " + expected.format(images=images, root=ann.parent)

    rc, lines = run_check(capsys, ann, "--images", images)
    assert rc == 1
    assert errors_of(lines) == [f"error: {message}"]

    # Training reads headers only (no pixel decode) and must stop on the same record.
    report = validate_for_training("detection", "train", ann, images)
    assert report.decode == "header" and report.errors == [message]
    with pytest.raises(DataError) as raised:
        raise_if_errors(report, where="data.train")
    assert str(raised.value) == f"data.train: {message}"


def test_the_clean_corpus_set_has_no_problem(dataset, capsys):
    ann, images, _ = dataset
    rc, lines = run_check(capsys, ann, "--images", images)
    assert rc == 0 and lines == [f"OK: {ann}: 3 images (3 decoded), 3 annotations, 1 categories; 0 errors, 0 warnings"]
    report = validate_for_training("detection", "train", ann, images)
    raise_if_errors(report, where="data.train")
    assert report.ok and report.problems == [] and report.num_images_decoded == 3
    assert report.warnings_line("data.train") == "data.train: no warnings"


def test_sub_folders_are_fine_and_sizes_come_from_headers_when_missing(dataset):
    ann, images, write = dataset
    write_jpeg(images / "sub" / "deeper" / "4.jpg", orientation=8)  # shown 48x64
    data = clean_coco()
    data["images"].append({"id": 4, "file_name": "sub/deeper/4.jpg"})  # no width/height: read from the file
    data["annotations"].append({"id": 4, "image_id": 4, "category_id": 1, "bbox": [30, 50, 10, 10], "area": 100, "iscrowd": 0})
    write(data)
    report = validate_for_training("detection", "train", ann, images)
    assert report.errors == []
    assert report.warnings == [f"{ann}: image id 4: has no 'width'/'height' (taken from the file's header)"]
    # The box is checked against the file's oriented size (48 wide): x 30..40 fits, y 50..60 fits in 64.
    data["annotations"][3]["bbox"] = [45, 50, 10, 10]
    write(data)
    report = validate_for_training("detection", "train", ann, images)
    assert f"{ann}: annotation id 4: bbox [45, 50, 10, 10] extends past the 48x64 image (it is clipped)" in report.warnings


def test_many_errors_make_one_line_with_the_count_and_the_command(dataset, capsys):
    ann, images, write = dataset
    data = clean_coco()
    for a in data["annotations"]:
        a["category_id"] = 5
    write(data)
    report = validate_for_training("detection", "val", ann, images)
    with pytest.raises(DataError) as raised:
        raise_if_errors(report, where="data.val")
    command = f"python -m cvengine.data check {ann} --images {images} --task detection"
    assert str(raised.value) == (
        f"data.val: {ann}: annotation id 1: category_id 5 is not in 'categories' (known: [1])"
        f" (and 2 more errors; run {command})"
    )
    assert "\n" not in str(raised.value)
    # The command it names lists all three.
    rc, lines = run_check(capsys, *shlex.split(command)[4:])
    assert rc == 1 and len(errors_of(lines)) == 3


def test_warnings_are_counted_by_kind_for_one_log_line(dataset):
    ann, images, write = dataset
    data = clean_coco()
    data["annotations"][0]["bbox"] = [50, 4, 20, 16]  # 50 + 20 > 64
    data["categories"].append({"id": 2, "name": "dog"})
    write(data)
    report = validate_for_training("detection", "train", ann, images)
    raise_if_errors(report, where="data.train")  # warnings alone do not stop training
    assert report.warning_counts() == {"bbox partly outside": 1, "unused category": 1}
    assert report.warnings_line("data.train") == "data.train: 2 warnings (1 bbox partly outside, 1 unused category)"


def test_each_kind_of_warning_prints_once_with_its_count(dataset, capsys):
    ann, images, write = dataset
    data = clean_coco()
    for a in data["annotations"]:
        a["segmentation"] = []
    data["annotations"][0]["bbox"] = [50, 4, 20, 16]
    data["annotations"][1]["bbox"] = [4, 40, 20, 16]
    write(data)
    rc, lines = run_check(capsys, ann, "--images", images)
    assert rc == 0
    assert warnings_of(lines) == [
        f"warning: {ann}: 2 × bbox partly outside (e.g. annotation id 1: bbox [50, 4, 20, 16] extends past the 64x48 image (it is clipped))",
        f"warning: {ann}: 3 × segmentation is an empty list (e.g. annotation id 1)",
    ]
    rc, lines = run_check(capsys, ann, "--images", images, "--all-warnings")
    assert len(warnings_of(lines)) == 5
    assert f"warning: {ann}: annotation id 2: bbox [4, 40, 20, 16] extends past the 64x48 image (it is clipped)" in lines


def test_header_mode_reads_no_pixels_and_full_mode_decodes_them(dataset):
    ann, images, _ = dataset
    jpg = images / "2.jpg"
    jpg.write_bytes(jpg.read_bytes()[: jpg.stat().st_size // 2])  # the header survives, the pixels do not
    assert validate_for_training("detection", "train", ann, images).ok
    full = check_dataset(ann, images, decode="full")
    [line] = full.errors
    assert line.startswith(f"{ann}: image id 2: cannot read image {jpg}") and "truncated" in line


def test_decode_none_opens_no_file(dataset, capsys, tmp_path):
    ann, images, _ = dataset
    for f in images.iterdir():
        f.unlink()
    report = check_dataset(ann, None, decode="none")
    assert report.ok and report.num_images_decoded == 0 and report.num_annotations == 3
    rc, lines = run_check(capsys, ann, "--decode", "none", "--images", tmp_path / "absent")
    assert rc == 0 and lines[-1].endswith("3 images (files not opened), 3 annotations, 1 categories; 0 errors, 0 warnings")


# ---------------------------------------------------------------- task rules and other layouts


def test_segmentation_tasks_need_a_mask_per_annotation(dataset):
    ann, images, write = dataset
    data = clean_coco()
    for a in data["annotations"][1:]:
        a["segmentation"] = [[4, 4, 24, 4, 24, 20, 4, 20]]
    write(data)
    assert validate_for_training("detection", "train", ann, images).ok
    for task in ("instance_segmentation", "semantic_segmentation"):
        report = validate_for_training(task, "train", ann, images)
        assert report.errors == [f"{ann}: annotation id 1: has no 'segmentation'; {task} needs a mask (polygons or RLE) per annotation"]


def test_semantic_background_collision(dataset):
    ann, images, write = dataset
    data = clean_coco()
    data["categories"] = [{"id": 0, "name": "cat"}]
    for a in data["annotations"]:
        a["category_id"] = 0
        a["segmentation"] = [[4, 4, 24, 4, 24, 20, 4, 20]]
    write(data)
    report = validate_for_training("semantic_segmentation", "train", ann, images)
    assert report.errors == [
        f"{ann}: category id 0 ('cat'): would collide with the background class cvengine adds as label 0 (category id 0);"
        " renumber the categories from 1, or name that category 'background'"
    ]
    data["categories"][0]["name"] = "background"
    write(data)
    assert validate_for_training("semantic_segmentation", "train", ann, images).ok


def test_coco_classification_needs_no_bbox_and_one_class_per_image(dataset, capsys):
    ann, images, write = dataset
    data = clean_coco()
    data["categories"].append({"id": 2, "name": "dog"})
    data["annotations"] = [{"id": 1, "image_id": 1, "category_id": 1}, {"id": 2, "image_id": 2, "category_id": 2},
                           {"id": 3, "image_id": 3, "category_id": 1}]
    write(data)
    rc, lines = run_check(capsys, ann, "--images", images)  # detected: no annotation has a bbox
    assert rc == 0 and warnings_of(lines) == []
    assert validate_for_training("classification", "train", ann, images).ok
    data["annotations"].append({"id": 4, "image_id": 3, "category_id": 2})
    data["annotations"].append({"id": 5, "image_id": 2, "category_id": "2"})
    write(data)
    report = validate_for_training("classification", "train", ann, images)
    assert report.errors == [
        f"{ann}: annotation id 5: category_id '2' is a string; write the number 2 without quotes",
        f"{ann}: image id 3: '3.jpg' has annotations of several classes ['cat', 'dog']; set model.multi_label = true for multi-label data",
    ]
    report = validate_for_training("classification", "train", ann, images, multi_label=True)
    assert report.errors == [report.errors[0]] and "annotation id 5" in report.errors[0]


def test_image_folder_and_mask_folder_at_header_depth(tmp_path):
    folders = tmp_path / "folders"
    write_jpeg(folders / "cat" / "a.jpg")
    write_jpeg(folders / "dog" / "b.jpg")
    (folders / "dog" / "c.jpg").write_text("not a JPEG")
    write_jpeg(folders / "dog" / "nested" / "d.jpg")
    report = validate_for_training("classification", "train", None, folders)
    assert report.errors == [f"{folders}: cannot read image {folders / 'dog' / 'c.jpg'}: cannot identify image file '{folders / 'dog' / 'c.jpg'}'"]
    assert report.warnings == [f"{folders}: {os.path.join('dog', 'nested', 'd.jpg')}: only files directly in a class folder are read; it is not used"]

    images, masks = tmp_path / "img", tmp_path / "masks"
    write_jpeg(images / "a.jpg")
    write_jpeg(images / "b.jpg", orientation=6)  # shown 48x64
    masks.mkdir()
    Image.fromarray(np.zeros((H, W), np.uint8)).save(masks / "a.png")
    Image.fromarray(np.zeros((H, W), np.uint8)).save(masks / "b.png")
    report = validate_for_training("semantic_segmentation", "train", None, images, masks=masks, labels=["bg", "road"])
    assert report.errors == [f"{masks}: mask {masks / 'b.png'} is 64x48 but image {images / 'b.jpg'} is 48x64 (width x height)"]
    assert report.check_command == f"python -m cvengine.data check {images} --masks {masks} --labels LABELS"


def _tiny_panoptic(root: Path, png_size=(W, H)) -> Path:
    """One image with two segments (a thing and a stuff) in a COCO panoptic json + PNG."""
    write_jpeg(root / "images" / "1.jpg")
    ids = np.zeros((png_size[1], png_size[0]), np.int64)
    ids[:, : png_size[0] // 2] = 7
    ids[:10, png_size[0] // 2 :] = 300
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
    (root / "pan").mkdir()
    Image.fromarray(rgb).save(root / "pan" / "1.png")
    data = {
        "images": [{"id": 1, "file_name": "1.jpg", "width": W, "height": H}],
        "annotations": [{"image_id": 1, "file_name": "1.png", "segments_info": [
            {"id": 7, "category_id": 1, "iscrowd": 0, "area": int((ids == 7).sum())},
            {"id": 300, "category_id": 2, "iscrowd": 0, "area": int((ids == 300).sum())}]}],
        "categories": [{"id": 1, "name": "person", "isthing": 1}, {"id": 2, "name": "sky", "isthing": 0}],
    }
    path = root / "pan.json"
    path.write_text(json.dumps(data))
    return path


def test_panoptic_at_header_depth(tmp_path):
    ok = _tiny_panoptic(tmp_path / "ok")
    assert validate_for_training("panoptic_segmentation", "train", ok, ok.parent / "images", masks=ok.parent / "pan").ok
    bad = _tiny_panoptic(tmp_path / "bad", png_size=(32, 48))
    data = json.loads(bad.read_text())
    data["annotations"][0]["segments_info"][0]["iscrowd"] = "no"
    bad.write_text(json.dumps(data))
    report = validate_for_training("panoptic_segmentation", "train", bad, bad.parent / "images", masks=bad.parent / "pan")
    assert report.errors == [
        f"{bad}: image id 1: segment id 7: iscrowd 'no' must be 0 or 1 (a string, which training would read as crowd); write 0 for an object, 1 for a crowd region",
        f"{bad}: image id 1: {bad.parent / 'pan' / '1.png'} is 32x48 but the image record says 64x48",
    ]
    data["annotations"][0]["file_name"] = "../1.png"
    bad.write_text(json.dumps(data))
    report = check_panoptic(bad, bad.parent / "images", bad.parent / "pan", decode="none")
    assert [p.kind for p in report.problems if p.severity == "error"] == ["invalid iscrowd", "file outside masks folder"]


# ---------------------------------------------------------------- real external data


@needs_external
def test_coco_val2014_ground_truth_has_no_errors_without_its_images(capsys):
    """The 100-image COCO val2014 ground truth (polygons and crowd RLEs); its images are not shipped,
    so the check reads the json alone (decode none)."""
    path = EXTERNAL / "faster_coco_eval" / "tests" / "dataset" / "cocoapi" / "instances_val2014_100.json"
    data = json.loads(path.read_text())
    for task in ("detection", "instance_segmentation"):
        report = validate_for_training(task, "val", path, None, decode="none")
        assert report.errors == [], report.errors[:3]
        assert (report.num_images, report.num_annotations) == (len(data["images"]), len(data["annotations"])) == (100, 839)
    rc, lines = run_check(capsys, path, "--decode", "none")
    assert rc == 0 and errors_of(lines) == []


@needs_external
def test_external_sets_with_images_have_no_errors():
    shapes = EXTERNAL / "faster_coco_eval" / "tests" / "dataset"
    voc = EXTERNAL / "rodm" / "data" / "database"
    toy = EXTERNAL / "rodm" / "toyexample"
    for ann, images in (
        (shapes / "gt_dataset.json", shapes),
        (voc / "gts" / "coco_format_v1" / "instances_default.json", voc / "images"),
        (voc / "gts" / "coco_format_v2" / "instances_v2.json", voc / "images"),
        (toy / "gts_coco_format" / "toy_example_coco.JSON", toy / "images"),
    ):
        for decode in ("full", "header"):
            report = check(ann, images, decode=decode)
            assert report.errors == [], (ann, decode, report.errors[:3])
            assert report.num_images_decoded == report.num_images == len(json.loads(ann.read_text())["images"])
    pan = EXTERNAL / "panopticapi" / "sample_data"
    for decode in ("full", "header"):
        report = check(pan / "panoptic_examples.json", pan / "input_images", decode=decode)
        assert report.layout == "coco-panoptic" and report.problems == [] and report.num_images_decoded == 2


@needs_external
def test_cvat_export_warnings_print_as_one_grouped_line():
    voc = EXTERNAL / "rodm" / "data" / "database"
    ann = voc / "gts" / "coco_format_v1" / "instances_default.json"
    data = json.loads(ann.read_text())
    empty = [a["id"] for a in data["annotations"] if a.get("segmentation") == []]
    assert len(empty) == len(data["annotations"]) == 273
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "cvengine.data", "check", str(ann), "--images", str(voc / "images")],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert warnings_of(lines) == [f"warning: {ann}: 273 × segmentation is an empty list (e.g. annotation id {empty[0]})"]
    assert errors_of(lines) == [] and "0 errors, 273 warnings" in proc.stdout
    report = validate_for_training("detection", "train", ann, voc / "images")
    assert report.warnings_line("data.train") == "data.train: 273 warnings (273 empty segmentation)"


@needs_external
def test_panoptic_stats_match_a_count_of_the_json_and_pngs(capsys):
    sample = EXTERNAL / "panopticapi" / "sample_data"
    path, png_dir = sample / "panoptic_examples.json", sample / "panoptic_examples"
    data = json.loads(path.read_text())
    isthing = {c["id"]: c["isthing"] for c in data["categories"]}
    segments = [s for a in data["annotations"] for s in a["segments_info"]]

    # The reference count: the json's segments, and each PNG's pixels decoded with numpy.
    pixels_by_category, void, total = Counter(), 0, 0
    for a in data["annotations"]:
        rgb = np.asarray(Image.open(png_dir / a["file_name"]).convert("RGB")).astype(np.int64)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
        total += ids.size
        void += int((ids == 0).sum())
        for s in a["segments_info"]:
            pixels_by_category[s["category_id"]] += int((ids == s["id"]).sum())

    stats = dataset_stats(path)
    assert stats["layout"] == "coco-panoptic" and stats["masks_dir"] == str(png_dir)
    assert (stats["num_images"], stats["num_segments"], stats["num_crowd"]) == (len(data["images"]), len(segments), sum(s["iscrowd"] for s in segments))
    assert stats["num_crowd"] == 3
    for group, flag in (("things", 1), ("stuff", 0)):
        mine = [s for s in segments if isthing[s["category_id"]] == flag]
        assert stats[group] == {
            "categories": sum(1 for v in isthing.values() if v == flag),
            "segments": len(mine),
            "crowd": sum(s["iscrowd"] for s in mine),
            "area": sum(s["area"] for s in mine),
        }
    by_id = {c["id"]: c for c in stats["classes"]}
    per_category = Counter(s["category_id"] for s in segments)
    assert {cid: c["segments"] for cid, c in by_id.items() if c["segments"]} == dict(per_category)
    for cid in per_category:
        assert by_id[cid]["pixels"] == pixels_by_category[cid]
        assert by_id[cid]["area"] == sum(s["area"] for s in segments if s["category_id"] == cid)
        assert by_id[cid]["images"] == sum(1 for a in data["annotations"] if any(s["category_id"] == cid for s in a["segments_info"]))
    assert stats["pixels"] == {"total": total, "void": void, "area_mismatches": 0}
    areas = [s["area"] for s in segments if not s["iscrowd"]]
    assert (stats["segment_area"]["min"], stats["segment_area"]["max"]) == (min(areas), max(areas))
    assert stats["segment_area"]["median"] == pytest.approx(float(np.median(areas)))

    # The CLI prints them (it exited 2 on this file before).
    assert data_main(["stats", str(path)]) == 0
    text = capsys.readouterr().out
    assert f"segments     {len(segments)}  (3 crowd)" in text and "person" in text


# The cases training used to accept silently (bad numbers, truncated ids, crowd strings, wrong sizes,
# paths leaving the images folder): `Engine` refuses each before any run folder or MLflow store exists.
TRAINING_REFUSES = ["bbox NaN", "bbox inf", "bbox negative", "bbox string", "category_id 1.7", "iscrowd string", "size differs", "file_name .."]


def _training_recipe(ann: Path, images: Path, model: str, output: Path) -> dict:
    split = {"images": str(images), "annotations": str(ann)}
    return {
        "task": "detection",
        "model": {"name": model},
        "data": {"batch_size": 2, "num_workers": 0, "train": split, "val": split},
        "train": {"max_epochs": 1, "output_dir": str(output)},
        "tracking": {"experiment": "refused"},
    }


@pytest.mark.parametrize("mutate, expected", [c[1:] for c in CORPUS if c[0] in TRAINING_REFUSES], ids=TRAINING_REFUSES)
def test_training_refuses_what_check_rejects_before_writing_anything(dataset, tiny_model, tmp_path, mutate, expected):
    from cvengine.engine.loop import Engine
    from cvengine.recipe import load_recipe

    ann, images, write = dataset
    data = clean_coco()
    mutate(data, ann.parent)
    write(data)
    output = tmp_path / "runs"
    recipe = load_recipe(_training_recipe(ann, images, tiny_model("detection", "rt_detr"), output))
    with pytest.raises(DataError) as raised:
        Engine(recipe, progress=False)
    assert str(raised.value) == f"data.train: {ann}: " + expected.format(images=images, root=ann.parent)
    assert not output.exists()


def test_run_cli_prints_the_record_in_one_line_and_exit_2(dataset, tiny_model, tmp_path):
    import tomli_w

    ann, images, write = dataset
    data = clean_coco()
    data["annotations"][1]["iscrowd"] = "no"
    write(data)
    output = tmp_path / "runs"
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(tomli_w.dumps(_training_recipe(ann, images, tiny_model("detection", "rt_detr"), output)))
    result = subprocess.run([sys.executable, "-m", "cvengine.run", str(recipe), "--no-progress"], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: data.train: {ann}: annotation id 2: iscrowd 'no' must be 0 or 1 (a string, which training would read as crowd); write 0 for an object, 1 for a crowd region"
    ]
    assert not output.exists() and not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()


@pytest.mark.parametrize("task", ["detection", "panoptic_segmentation"])
def test_training_start_parses_each_annotations_file_once(task, tmp_path, monkeypatch, tiny_model):
    """The validator's parsed document goes to the index (at COCO train2017 size a second parse is
    ~8 s of start-up); a file changed between the two reads is parsed again."""
    from conftest import detection_recipe
    from cvengine import Engine, load_recipe
    from cvengine.data.demo import make_demo

    make_demo(tmp_path / "data", task=task, seed=0, num_train=4, num_val=2)
    recipe = detection_recipe(tmp_path / "data", tiny_model(task, "detr", 11 if task == "panoptic_segmentation" else 10), tmp_path / "runs")
    recipe["task"] = task
    if task == "panoptic_segmentation":
        for split in ("train", "val"):
            recipe["data"][split] = {"images": f"{split}/images", "annotations": f"{split}/panoptic.json"}
    parsed = Counter()
    real_loads, real_load = json.loads, json.load

    def counting_loads(text, *args, **kwargs):
        document = real_loads(text, *args, **kwargs)
        if isinstance(document, dict) and "annotations" in document:
            parsed[len(document["images"])] += 1
        return document

    def counting_load(fh, *args, **kwargs):
        return counting_loads(fh.read(), *args, **kwargs)

    monkeypatch.setattr(json, "loads", counting_loads)
    monkeypatch.setattr(json, "load", counting_load)
    Engine(load_recipe(recipe), tracker=None, progress=False)
    assert parsed == {4: 1, 2: 1}, parsed  # train (4 images) and val (2), once each


def test_a_file_changed_after_validation_is_parsed_again(tmp_path):
    from cvengine.data.coco import hand_over, parsed_once, read_json

    path = tmp_path / "annotations.json"
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "old"}]}))
    with parsed_once():
        hand_over(path, json.loads(path.read_text()))
        assert read_json(path)["categories"][0]["name"] == "old"
        hand_over(path, json.loads(path.read_text()))
        path.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "new, and longer"}]}))
        assert read_json(path)["categories"][0]["name"] == "new, and longer"
    hand_over(path, {"stale": True})  # outside parsed_once nothing is held
    assert "stale" not in read_json(path)
