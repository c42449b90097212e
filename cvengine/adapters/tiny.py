"""Small randomly initialised checkpoints per family, for training from scratch on small images, for
the demo job and for tests. Written as a normal checkpoint folder (config.json + weights +
preprocessor_config.json), so they load through the same `from_pretrained` path as a hub id. The
configurations themselves live beside each family's adapter (`Family.tiny`)."""
from __future__ import annotations

from pathlib import Path


def create_tiny(task: str, family: str, out_dir: str | Path, num_labels: int = 10) -> Path:
    """Write a random-init `family` checkpoint folder for `task` at `out_dir` (config, weights,
    processor) and return the folder."""
    import torch

    from cvengine.adapters import ADAPTERS, supported_families
    from cvengine.errors import RecipeError

    if task not in ADAPTERS:
        raise RecipeError(f"no model families for task '{task}'; tasks: {', '.join(ADAPTERS)}")
    if family not in ADAPTERS[task]:
        raise RecipeError(f"no small configuration for '{family}' ({task}); families: {', '.join(supported_families(task))}")
    entry = ADAPTERS[task][family]
    config, processor = entry.tiny()
    config.num_labels = num_labels
    if hasattr(config, "use_pretrained_backbone"):
        config.use_pretrained_backbone = False
    torch.manual_seed(0)
    import transformers

    from cvengine.adapters.loading import init_as_reference

    model = getattr(transformers, entry.adapter.auto_model).from_config(config)
    init_as_reference(model)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
