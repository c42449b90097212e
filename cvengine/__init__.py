"""cvengine: train, evaluate, register and serve Hugging Face vision models on COCO-format data."""
import os

# Albumentations checks online for a newer release at import; users on closed networks would wait on it.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"

from cvengine.recipe import Recipe, load_recipe  # noqa: E402

__all__ = ["Engine", "Recipe", "load_recipe", "Callback", "CheckpointHook", "MLflowHook", "__version__"]


def __getattr__(name):
    # The engine pulls in torch, transformers and accelerate: import them only when asked for.
    if name == "Engine":
        from cvengine.engine.loop import Engine

        return Engine
    if name == "Callback":
        from cvengine.engine.hooks import Callback

        return Callback
    if name == "CheckpointHook":
        from cvengine.engine.checkpoint import CheckpointHook

        return CheckpointHook
    if name == "MLflowHook":
        from cvengine.engine.tracking import MLflowHook

        return MLflowHook
    raise AttributeError(f"module 'cvengine' has no attribute {name!r}")
