"""`cvengine.data convert`: every source format -> COCO, checked box by box against the source.

The source is real, externally authored material (`../shared/external-data/rodm`: 100 PASCAL VOC
JPEGs with CVAT's "COCO 1.0" export, 273 boxes). The other formats are written here from that export
by their published specifications (VOC: 1-based inclusive corners; YOLO: normalised centre and size;
CVAT XML: pixel corners; Label Studio: percentages; LabelMe: rectangle points; cppe-5 style Hugging
Face datasets: COCO xywh), so each reader is checked against the same independent ground truth.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, run_module

EXTERNAL = REPO.parent / "shared" / "external-data"
RODM = EXTERNAL / "rodm" / "data" / "database"
CVAT_COCO = RODM / "gts" / "coco_format_v1" / "instances_default.json"
pytestmark = pytest.mark.skipif(not CVAT_COCO.exists(), reason="../shared/external-data is not beside this checkout")


def _source(num_images: int | None = None):
    """The CVAT export as {file_name: [(class name, x1, y1, x2, y2), ...]}, its sizes and class names."""
    data = json.loads(CVAT_COCO.read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    images = sorted(data["images"], key=lambda im: im["file_name"])[:num_images]
    boxes = {im["file_name"]: [] for im in images}
    by_id = {im["id"]: im["file_name"] for im in images}
    for a in data["annotations"]:
        if a["image_id"] in by_id:
            x, y, w, h = a["bbox"]
            boxes[by_id[a["image_id"]]].append((names[a["category_id"]], x, y, x + w, y + h))
    sizes = {im["file_name"]: (im["width"], im["height"]) for im in images}
    return boxes, sizes, [names[k] for k in sorted(names)]


def _converted(annotations: Path) -> dict:
    data = json.loads(annotations.read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    out = {im["file_name"]: [] for im in data["images"]}
    by_id = {im["id"]: im for im in data["images"]}
    for a in data["annotations"]:
        x, y, w, h = a["bbox"]
        out[by_id[a["image_id"]]["file_name"]].append((names[a["category_id"]], x, y, x + w, y + h))
    return out


def _assert_same_boxes(expected: dict, got: dict, atol: float = 1e-3) -> None:
    assert sorted(got) == sorted(expected)
    for name, boxes in expected.items():
        want = sorted(boxes)
        have = sorted(got[name])
        assert [b[0] for b in have] == [b[0] for b in want], name
        np.testing.assert_allclose(np.array([b[1:] for b in have]).reshape(-1, 4), np.array([b[1:] for b in want]).reshape(-1, 4), atol=atol, err_msg=name)


def _copy_images(names, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copyfile(RODM / "images" / name, folder / name)


def _check_ok(annotations: Path) -> None:
    from cvengine.data.validate import check

    report = check(str(annotations), str(annotations.parent / "images"))
    assert report.ok, "\n".join(report.lines())


def test_cvat_coco_export_converts_unchanged_and_checks_clean(tmp_path):
    boxes, sizes, names = _source()
    src = tmp_path / "cvat"
    (src / "annotations").mkdir(parents=True)
    shutil.copyfile(CVAT_COCO, src / "annotations" / "instances_default.json")
    _copy_images(boxes, src / "images")
    result = run_module("cvengine.data", "convert", src, tmp_path / "out", "--from", "cvat")
    assert result.returncode == 0, result.stderr
    assert "100 images, 273 annotations" in result.stdout
    out = tmp_path / "out" / "annotations.json"
    _assert_same_boxes(boxes, _converted(out), atol=0)
    data = json.loads(out.read_text())
    assert [c["name"] for c in data["categories"]] == names
    assert {im["file_name"]: (im["width"], im["height"]) for im in data["images"]} == sizes
    # Image files are copied, not re-encoded.
    for name in list(boxes)[:5]:
        assert (tmp_path / "out" / "images" / name).read_bytes() == (RODM / "images" / name).read_bytes()
    _check_ok(out)
    # A non-empty destination is refused: nothing already there is overwritten.
    again = run_module("cvengine.data", "convert", src, tmp_path / "out", "--from", "cvat")
    assert again.returncode == 2 and "--overwrite" in again.stderr and "Traceback" not in again.stderr


def test_voc_devkit_layout_with_splits(tmp_path):
    boxes, sizes, _ = _source(24)
    src = tmp_path / "VOC2007"
    _copy_images(boxes, src / "JPEGImages")
    (src / "Annotations").mkdir()
    for name, objects in boxes.items():
        w, h = sizes[name]
        xml = [f"<annotation><filename>{name}</filename><size><width>{w}</width><height>{h}</height><depth>3</depth></size>"]
        for cls, x1, y1, x2, y2 in objects:
            # VOC devkit: 1-based pixel indices, both corners inclusive.
            xml.append(f"<object><name>{cls}</name><bndbox><xmin>{x1 + 1:g}</xmin><ymin>{y1 + 1:g}</ymin><xmax>{x2:g}</xmax><ymax>{y2:g}</ymax></bndbox></object>")
        (src / "Annotations" / f"{Path(name).stem}.xml").write_text("".join(xml) + "</annotation>")
    stems = [Path(n).stem for n in boxes]
    (src / "ImageSets" / "Main").mkdir(parents=True)
    (src / "ImageSets" / "Main" / "train.txt").write_text("\n".join(stems[:16]) + "\n")
    (src / "ImageSets" / "Main" / "val.txt").write_text("\n".join(stems[16:]) + "\n")
    (src / "ImageSets" / "Main" / "dog_train.txt").write_text(f"{stems[0]}  1\n")  # per-class list: not a split
    result = run_module("cvengine.data", "convert", src, tmp_path / "out", "--from", "voc")
    assert result.returncode == 0, result.stderr
    train, val = _converted(tmp_path / "out" / "train" / "annotations.json"), _converted(tmp_path / "out" / "val" / "annotations.json")
    names = list(boxes)
    _assert_same_boxes({n: boxes[n] for n in names[:16]}, train, atol=0)
    _assert_same_boxes({n: boxes[n] for n in names[16:]}, val, atol=0)
    _check_ok(tmp_path / "out" / "train" / "annotations.json")


def test_yolo_with_data_yaml_splits(tmp_path):
    boxes, sizes, names = _source(20)
    src = tmp_path / "yolo"
    files = list(boxes)
    for split, chunk in (("train", files[:12]), ("valid", files[12:])):
        _copy_images(chunk, src / split / "images")
        (src / split / "labels").mkdir(parents=True)
        for name in chunk:
            w, h = sizes[name]
            lines = [
                f"{names.index(c)} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}"
                for c, x1, y1, x2, y2 in boxes[name]
            ]
            (src / split / "labels" / f"{Path(name).stem}.txt").write_text("\n".join(lines))
    # Roboflow's data.yaml layout.
    (src / "data.yaml").write_text(f"train: ../train/images\nval: ../valid/images\nnc: {len(names)}\nnames: {json.dumps(names)}\n")
    result = run_module("cvengine.data", "convert", src, tmp_path / "out", "--from", "yolo")
    assert result.returncode == 0, result.stderr
    # 6 decimals of a normalised coordinate: within 1e-3 px on 500 px images.
    _assert_same_boxes({n: boxes[n] for n in files[:12]}, _converted(tmp_path / "out" / "train" / "annotations.json"), atol=2e-3)
    _assert_same_boxes({n: boxes[n] for n in files[12:]}, _converted(tmp_path / "out" / "val" / "annotations.json"), atol=2e-3)
    data = json.loads((tmp_path / "out" / "train" / "annotations.json").read_text())
    assert [c["name"] for c in data["categories"]] == names
    _check_ok(tmp_path / "out" / "val" / "annotations.json")


def test_cvat_xml_boxes_and_polygons(tmp_path):
    boxes, sizes, names = _source(10)
    src = tmp_path / "cvat_xml"
    _copy_images(boxes, src / "images")
    parts = ["<?xml version='1.0' encoding='utf-8'?><annotations><version>1.1</version><meta><task><labels>"]
    parts += [f"<label><name>{n}</name><type>any</type></label>" for n in names]
    parts.append("</labels></task></meta>")
    first = next(iter(boxes))
    for i, (name, objects) in enumerate(boxes.items()):
        w, h = sizes[name]
        parts.append(f'<image id="{i}" name="{name}" width="{w}" height="{h}">')
        for cls, x1, y1, x2, y2 in objects:
            parts.append(f'<box label="{cls}" occluded="0" source="manual" xtl="{x1:.2f}" ytl="{y1:.2f}" xbr="{x2:.2f}" ybr="{y2:.2f}" z_order="0"></box>')
        if name == first:
            parts.append('<polygon label="person" occluded="0" points="10.00,20.00;50.00,20.00;30.00,60.00" z_order="0"></polygon>')
        parts.append("</image>")
    (src / "annotations.xml").write_text("".join(parts) + "</annotations>")
    result = run_module("cvengine.data", "convert", src, tmp_path / "out", "--from", "cvat")
    assert result.returncode == 0, result.stderr
    expected = {**boxes, first: boxes[first] + [("person", 10.0, 20.0, 50.0, 60.0)]}
    _assert_same_boxes(expected, _converted(tmp_path / "out" / "annotations.json"), atol=0)
    data = json.loads((tmp_path / "out" / "annotations.json").read_text())
    assert [c["name"] for c in data["categories"]] == names
    polygon = [a for a in data["annotations"] if a.get("segmentation")]
    assert len(polygon) == 1 and polygon[0]["segmentation"] == [[10.0, 20.0, 50.0, 20.0, 30.0, 60.0]]
    assert polygon[0]["area"] > 0
    _check_ok(tmp_path / "out" / "annotations.json")


def test_labelstudio_json_export(tmp_path):
    boxes, sizes, _ = _source(10)
    src = tmp_path / "ls"
    _copy_images(boxes, src / "images")
    tasks = []
    for i, (name, objects) in enumerate(boxes.items()):
        w, h = sizes[name]
        result = [
            {
                "original_width": w, "original_height": h, "image_rotation": 0, "from_name": "label", "to_name": "image", "type": "rectanglelabels",
                "value": {"x": 100 * x1 / w, "y": 100 * y1 / h, "width": 100 * (x2 - x1) / w, "height": 100 * (y2 - y1) / h, "rotation": 0, "rectanglelabels": [cls]},
            }
            for cls, x1, y1, x2, y2 in objects
        ]
        tasks.append({"id": i + 1, "data": {"image": f"/data/upload/1/{name}"}, "annotations": [{"id": i + 1, "result": result}]})
    (src / "export.json").write_text(json.dumps(tasks))
    run = run_module("cvengine.data", "convert", src, tmp_path / "out", "--from", "labelstudio")
    assert run.returncode == 0, run.stderr
    _assert_same_boxes(boxes, _converted(tmp_path / "out" / "annotations.json"), atol=1e-3)
    _check_ok(tmp_path / "out" / "annotations.json")


def test_labelme_rectangles(tmp_path):
    boxes, sizes, _ = _source(8)
    src = tmp_path / "labelme"
    _copy_images(boxes, src)
    for name, objects in boxes.items():
        w, h = sizes[name]
        shapes = [{"label": c, "points": [[x1, y1], [x2, y2]], "shape_type": "rectangle", "group_id": None} for c, x1, y1, x2, y2 in objects]
        (src / f"{Path(name).stem}.json").write_text(json.dumps({"shapes": shapes, "imagePath": name, "imageWidth": w, "imageHeight": h}))
    run = run_module("cvengine.data", "convert", src, tmp_path / "out", "--from", "labelme")
    assert run.returncode == 0, run.stderr
    _assert_same_boxes(boxes, _converted(tmp_path / "out" / "annotations.json"), atol=1e-3)


def _hf_dataset_dict(boxes, sizes, names, files_by_split):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({
        "image_id": datasets.Value("int64"),
        "image": datasets.Image(),
        "width": datasets.Value("int32"),
        "height": datasets.Value("int32"),
        "objects": {"bbox": datasets.List(datasets.List(datasets.Value("float32"), length=4)), "category": datasets.List(datasets.ClassLabel(names=names))},
    })
    splits = {}
    for split, files in files_by_split.items():
        rows = {"image_id": [], "image": [], "width": [], "height": [], "objects": []}
        for name in files:
            rows["image_id"].append(int(Path(name).stem.replace("_", "")))
            rows["image"].append({"bytes": (RODM / "images" / name).read_bytes(), "path": name})
            rows["width"].append(sizes[name][0])
            rows["height"].append(sizes[name][1])
            # cppe-5: COCO [x, y, w, h] in pixels, categories as ClassLabel ids.
            rows["objects"].append({"bbox": [[x1, y1, x2 - x1, y2 - y1] for _, x1, y1, x2, y2 in boxes[name]], "category": [names.index(c) for c, *_ in boxes[name]]})
        splits[split] = datasets.Dataset.from_dict(rows, features=features)
    return datasets.DatasetDict(splits)


def test_hf_datasets_folder(tmp_path):
    boxes, sizes, names = _source(12)
    files = list(boxes)
    dataset = _hf_dataset_dict(boxes, sizes, names, {"train": files[:8], "validation": files[8:]})
    dataset.save_to_disk(str(tmp_path / "hf"))
    run = run_module("cvengine.data", "convert", tmp_path / "hf", tmp_path / "out", "--from", "hf-datasets")
    assert run.returncode == 0, run.stderr
    for split, chunk in (("train", files[:8]), ("val", files[8:])):
        got = _converted(tmp_path / "out" / split / "annotations.json")
        # File names come from the image ids; compare in order.
        assert len(got) == len(chunk)
        renamed = {f"{int(Path(n).stem.replace('_', '')):08d}.jpg": boxes[n] for n in chunk}
        _assert_same_boxes(renamed, got, atol=1e-4)
        for n in chunk:
            written = tmp_path / "out" / split / "images" / f"{int(Path(n).stem.replace('_', '')):08d}.jpg"
            assert written.read_bytes() == (RODM / "images" / n).read_bytes()
    _check_ok(tmp_path / "out" / "val" / "annotations.json")
    # These xywh boxes read as [x1, y1, x2, y2] give corners out of order: the error names the fix.
    run = run_module("cvengine.data", "convert", tmp_path / "hf", tmp_path / "wrong", "--from", "hf-datasets", "--bbox-format", "xyxy")
    assert run.returncode == 2 and "--bbox-format xywh" in run.stderr and "Traceback" not in run.stderr
    missing = run_module("cvengine.data", "convert", tmp_path / "nope", tmp_path / "o2", "--from", "hf-datasets")
    assert missing.returncode == 2 and "no such folder" in missing.stderr


def test_recipe_split_may_name_a_hf_datasets_folder(tmp_path, monkeypatch, tiny_model):
    """data.<split>.images = a save_to_disk folder: the same COCO loader, index and training loop."""
    from accelerate.state import AcceleratorState

    from cvengine.engine.loop import Engine
    from cvengine.recipe import load_recipe
    from cvengine.tasks import get_task

    monkeypatch.setenv("CVENGINE_CACHE", str(tmp_path / "cache"))
    boxes, sizes, names = _source(6)
    files = list(boxes)
    _hf_dataset_dict(boxes, sizes, names, {"train": files[:4], "validation": files[4:]}).save_to_disk(str(tmp_path / "hf"))
    recipe = load_recipe({
        "task": "detection",
        "model": {"name": tiny_model("detection", "rt_detr", num_labels=len(names)), "pretrained": True},
        "data": {"root": str(tmp_path), "batch_size": 2, "num_workers": 0, "image_size": 64, "train": {"images": "hf"}, "val": {"images": "hf"}},
        "augment": {"enabled": False},
        "train": {"max_epochs": 1, "output_dir": str(tmp_path / "runs")},
    })
    task = get_task("detection")
    index = task.load_index(recipe, "val")
    assert [index.label_map.names[k] for k in range(len(names))] == names
    for i, name in enumerate(files[4:]):
        got_boxes, got_labels = index.targets(i)
        want = sorted(boxes[name])
        have = sorted(zip([names[k] for k in got_labels], *np.asarray(got_boxes).T))
        assert [h[0] for h in have] == [w[0] for w in want]
        np.testing.assert_allclose(np.array([h[1:] for h in have]), np.array([w[1:] for w in want]), atol=1e-4)
        assert (int(index.widths[i]), int(index.heights[i])) == sizes[name]
    cached = Path(index.annotations_path)
    stamp = cached.stat().st_mtime_ns
    assert task.load_index(recipe, "val").annotations_path == str(cached) and cached.stat().st_mtime_ns == stamp
    AcceleratorState._reset_state(reset_partial_state=True)
    engine = Engine(recipe, tracker=None, progress=False)
    engine.fit()
    metrics = json.loads((Path(engine.run_dir) / "metrics.json").read_text())
    assert "val/map" in json.dumps(metrics)
