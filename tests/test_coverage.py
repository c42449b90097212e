"""The registry against the installed transformers: every family of the Auto mappings a task draws
from is either served or refused with a reason, and `python -m cvengine.models --coverage` says so."""
from __future__ import annotations

from cvengine.adapters import ADAPTERS
from cvengine.adapters.refused import REFUSED, TASK_MAPPINGS, ALL_TASKS, coverage, mapping_families
from conftest import run_module


def test_every_mapped_family_is_supported_or_refused():
    missing = {task: [m for m, status, _ in rows if status == "MISSING"] for task, rows in coverage().items()}
    assert not any(missing.values()), f"families of transformers' Auto mappings neither supported nor refused: {missing}"


def test_refusals_are_current_and_argued():
    """A refusal names a family the mappings list for its task, that no adapter serves, with a reason
    longer than a word; stale entries would hide a family that has become trainable."""
    for (task, model_type), reason in REFUSED.items():
        tasks = list(TASK_MAPPINGS) if task == ALL_TASKS else [task]
        assert any(model_type in mapping_families(t) for t in tasks), f"{model_type} is in no mapping of {tasks}"
        assert all(model_type not in ADAPTERS.get(t, {}) for t in tasks), f"{model_type} is both refused and served for {task}"
        assert len(reason.split()) >= 6


def test_mapping_families_read_from_transformers():
    from transformers.models.auto.modeling_auto import MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES, MODEL_FOR_UNIVERSAL_SEGMENTATION_MAPPING_NAMES

    assert set(mapping_families("detection")) == set(MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES)
    assert set(mapping_families("panoptic_segmentation")) == set(MODEL_FOR_UNIVERSAL_SEGMENTATION_MAPPING_NAMES)


def test_coverage_command_prints_every_family_with_status():
    result = run_module("cvengine.models", "--coverage", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    table = coverage()
    for task, rows in table.items():
        supported = sum(status == "supported" for _, status, _ in rows)
        assert f"{task}: {supported} supported" in result.stdout
        for model_type, status, _ in rows:
            assert any(line.split()[:2] == [model_type, status] for line in result.stdout.splitlines()), (task, model_type)
