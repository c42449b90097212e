"""The evaluation report of classification and semantic segmentation (instance and panoptic: in
test_lifecycle_segmentation.py) opens in a real headless Chromium, is self-contained, and every image
in it loads."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from test_report import CHECK, _chromium


def assert_report_loads(report: Path, headings: list[str], min_images: int, tmp_path: Path) -> None:
    """`report` names each of `headings`, inlines every image, and Chromium loads >= `min_images`."""
    html = report.read_text()
    for heading in headings:
        assert heading in html, f"{heading!r} missing from {report}"
    assert not re.search(r'<img[^>]+src="(?!data:)', html)
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium binary on PATH (apt-get install -y chromium)")
    page = tmp_path / "report.html"
    page.write_text(html.replace("</body>", CHECK + "</body>"))
    result = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000", "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    marks = re.search(r'data-images-loaded="([01]*)"', result.stdout)
    assert marks, f"the page did not load in chromium: {result.stderr[-500:]}"
    assert len(marks.group(1)) >= min_images and set(marks.group(1)) == {"1"}, marks.group(1)


def _train(task: str, family: str, tiny_model, data: Path, output: Path, steps: int, data_section: dict, **extra) -> Path:
    from cvengine.engine.loop import Engine
    from cvengine.recipe import load_recipe

    recipe = {
        "task": task,
        "model": {"name": tiny_model(task, family), "pretrained": True},
        "data": {"root": str(data), "batch_size": 8, "num_workers": 0, **data_section, **extra},
        "augment": {"enabled": False},
        "train": {"max_epochs": steps, "lr": 3e-3, "output_dir": str(output), "eval_every_epochs": steps},
        "tracking": {"experiment": "tests", "run_name": task},
    }
    engine = Engine(load_recipe(recipe), tracker=None, progress=False)
    engine.fit()
    return Path(engine.run_dir)


def test_classification_report(tiny_model, demo_classification, tmp_path):  # noqa: F811
    """A ViT trained 10 steps on the classification demo (16 train, 8 val images)."""
    from cvengine.evaluate import evaluate_run

    split = {"train": {"images": "train/images", "annotations": "train/annotations.json"}, "val": {"images": "val/images", "annotations": "val/annotations.json"}}
    run_dir = _train("classification", "vit", tiny_model, demo_classification, tmp_path / "runs", 10, split)
    metrics, _ = evaluate_run(str(run_dir), "best", "val")
    html = (run_dir / "report" / "report.html").read_text()
    assert f"{metrics['val/accuracy']:.3f}" in html
    # Confusion matrix and a gallery of the misclassified of the 8 validation images.
    wrong = round((1 - metrics["val/accuracy"]) * 8)
    assert html.count("<figure>") == min(wrong, 12)
    assert_report_loads(run_dir / "report" / "report.html", ["Confusion matrix", "Top confusions", "Per-class precision", "Misclassified images"], 1 + min(wrong, 12), tmp_path)


def test_semantic_report(tiny_model, demo_semantic, tmp_path):  # noqa: F811
    """A SegFormer trained 10 steps on the semantic demo (8 train, 4 val images)."""
    from cvengine.evaluate import evaluate_run

    split = {"train": {"images": "train/images", "annotations": "train/annotations.json"}, "val": {"images": "val/images", "annotations": "val/annotations.json"}}
    run_dir = _train("semantic_segmentation", "segformer", tiny_model, demo_semantic, tmp_path / "runs", 10, split)
    metrics, _ = evaluate_run(str(run_dir), "best", "val")
    html = (run_dir / "report" / "report.html").read_text()
    assert f"{metrics['val/miou']:.3f}" in html
    assert_report_loads(run_dir / "report" / "report.html", ["Per-class IoU", "Worst images", "Best images"], 1 + 4, tmp_path)
