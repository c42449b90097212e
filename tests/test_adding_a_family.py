"""Adding a model family is one file plus one line, and the registry-driven tests then cover it.

A copy of the repository gets a new adapter file for a family cvengine has never seen (a small
convolutional classifier registered with transformers' Auto classes, as a third-party model would be)
and one line in FAMILY_MODULES. Nothing else changes: the copy's own registry-driven tests (train,
post-process, score; backbone learning rate; inputs against the image processor) must then collect
and pass for the new family, and `python -m cvengine.models` must list it.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

NEW_FAMILY_FILE = '''"""TinyNet: a small convolutional image classifier."""
from __future__ import annotations

from torch import nn
from transformers import AutoConfig, AutoModelForImageClassification, PretrainedConfig, PreTrainedModel, ViTImageProcessorPil
from transformers.modeling_outputs import ImageClassifierOutput

from cvengine.adapters.base import Family
from cvengine.adapters.classification import ImageClassificationAdapter


class TinyNetConfig(PretrainedConfig):
    model_type = "tinynet"

    def __init__(self, width: int = 16, **kwargs):
        self.width = width
        super().__init__(**kwargs)


class TinyNetPreTrainedModel(PreTrainedModel):
    config_class = TinyNetConfig
    base_model_prefix = "tinynet"
    main_input_name = "pixel_values"


class TinyNetModel(TinyNetPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.features = nn.Sequential(nn.Conv2d(3, config.width, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.post_init()

    def forward(self, pixel_values):
        return self.features(pixel_values).flatten(1)  # (B, width)


class TinyNetForImageClassification(TinyNetPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.tinynet = TinyNetModel(config)
        self.classifier = nn.Linear(config.width, config.num_labels)
        self.post_init()

    def forward(self, pixel_values=None, labels=None, **kwargs):
        logits = self.classifier(self.tinynet(pixel_values))  # (B, K)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits, labels) if labels.dtype.is_floating_point is False else nn.functional.binary_cross_entropy_with_logits(logits, labels)
        return ImageClassifierOutput(loss=loss, logits=logits)


AutoConfig.register("tinynet", TinyNetConfig)
AutoModelForImageClassification.register(TinyNetConfig, TinyNetForImageClassification)


def tiny_tinynet():
    return TinyNetConfig(), ViTImageProcessorPil(size={"height": 64, "width": 64})


FAMILIES = [Family("tinynet", "classification", ImageClassificationAdapter, tiny_tinynet)]
'''


def test_one_file_and_one_line_register_a_family_that_the_registry_tests_cover(tmp_path):
    copy = tmp_path / "repo"
    ignore = shutil.ignore_patterns("__pycache__", ".venv", "runs", "*.egg-info", ".git")
    for part in ("cvengine", "tests", "recipes"):
        shutil.copytree(REPO / part, copy / part, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, copy / name)
    if (REPO.parent / "shared").is_dir() and not (tmp_path / "shared").exists():
        (tmp_path / "shared").symlink_to(REPO.parent / "shared")

    # The one file ...
    (copy / "cvengine" / "adapters" / "tinynet.py").write_text(NEW_FAMILY_FILE)
    # ... and the one line.
    registry = copy / "cvengine" / "adapters" / "__init__.py"
    text = registry.read_text()
    assert text.count("FAMILY_MODULES = (\n") == 1
    registry.write_text(text.replace("FAMILY_MODULES = (\n", 'FAMILY_MODULES = (\n    "tinynet",\n'))

    env = {**os.environ, "PYTHONPATH": str(copy), "OMP_NUM_THREADS": "1"}
    listing = subprocess.run([sys.executable, "-m", "cvengine.models"], cwd=copy, env=env, capture_output=True, text=True, timeout=300)
    assert listing.returncode == 0, listing.stderr
    assert "tinynet" in listing.stdout

    tests = ["tests/test_classification.py", "tests/test_heads.py", "tests/test_preprocessing_parity.py"]
    result = subprocess.run([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-k", "tinynet", *tests],
                            cwd=copy, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    # Every file's registry-driven tests collected the new family (train/score; backbone rate and
    # checkpoint writer; input parity) and passed.
    passed = [line.split("::")[0] for line in result.stdout.splitlines() if "tinynet" in line and line.rstrip().endswith("%]") and " PASSED " in line]
    assert sorted(set(passed)) == sorted(tests), result.stdout[-2000:]
