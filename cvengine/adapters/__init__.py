"""The family registry: task -> Hugging Face `config.model_type` -> Family (adapter + tiny config).

Explicit and greppable: each adapter file lists the families it serves in `FAMILIES`, and this file
assembles them from the files named in FAMILY_MODULES. Adding a family = one file (or an entry in an
existing one) + one line below; the registry-driven tests then train a tiny model of it through the
whole path and compare its inputs with its image processor's.
"""
from __future__ import annotations

import importlib

from cvengine.adapters.base import Adapter, Family
from cvengine.errors import RecipeError

# The adapter files (cvengine/adapters/<name>.py) whose FAMILIES make the registry, one per line.
FAMILY_MODULES = (
    "detr",
    "classification",
    "semantic",
    "mask_classification",
    "oneformer",
)


def build_registry(families) -> dict[str, dict[str, Family]]:
    """{task: {model_type: Family}}; a family registered twice for one task is an error."""
    registry: dict[str, dict[str, Family]] = {}
    for family in families:
        served = registry.setdefault(family.task, {})
        if family.model_type in served:
            raise ValueError(f"model family '{family.model_type}' is registered twice for {family.task}")
        served[family.model_type] = family
    return registry


FAMILIES: list[Family] = [family for name in FAMILY_MODULES for family in importlib.import_module(f"cvengine.adapters.{name}").FAMILIES]
ADAPTERS = build_registry(FAMILIES)


def supported_families(task: str) -> list[str]:
    return sorted(ADAPTERS.get(task, {}))


def get_family(task: str, model_type: str, name: str = "") -> Family:
    families = ADAPTERS.get(task, {})
    if model_type not in families:
        raise RecipeError(
            f"model.name '{name}' is a '{model_type}' model, which cvengine does not support for {task}; "
            f"supported families: {', '.join(sorted(families)) or 'none yet'}"
        )
    return families[model_type]


def adapter_class(task: str, model_type: str, name: str = "") -> type:
    return get_family(task, model_type, name).adapter


def auto_model_class(task: str, model_type: str):
    """The transformers Auto class that loads `model_type` for `task` (its adapter's `auto_model`)."""
    import transformers

    return getattr(transformers, adapter_class(task, model_type).auto_model)


from cvengine.adapters.loading import load_config, load_model  # noqa: E402

__all__ = ["ADAPTERS", "FAMILIES", "Adapter", "Family", "adapter_class", "auto_model_class", "get_family", "load_config", "load_model", "supported_families"]
