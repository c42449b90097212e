"""What every adapter shares, and the registry entry of a model family.

An adapter turns Samples into the family's model inputs (its label format) and the model's outputs
into predictions in ORIGINAL-image pixels. The engine calls, per batch:
    collate(samples) in the loader workers -> model_inputs(batch) on the device -> model(**inputs)
    -> loss(outputs) when training, postprocess(outputs, batch) when predicting.
"""
from __future__ import annotations

from typing import Callable

import attrs
import torch


@attrs.frozen
class Family:
    """One registry entry: a transformers `config.model_type` served for one task by an adapter."""

    model_type: str
    task: str
    adapter: type
    # () -> (config, image processor) of a small random-init model: tests, the demo job, `cvengine.models create`.
    tiny: Callable[[], tuple]


def own_storage(model) -> None:
    """transformers loads some fused projections as views of one tensor (LW-DETR's and RF-DETR's
    decoder q/k/v, Sapiens2's MLP gate/up); safetensors refuses to write tensors that share storage
    only in part (the checkpoint's model.safetensors). Each such parameter gets its own storage,
    same values."""
    with torch.no_grad():
        for module in model.modules():
            for name, param in list(module.named_parameters(recurse=False)):
                if param.untyped_storage().nbytes() != param.numel() * param.element_size():
                    setattr(module, name, torch.nn.Parameter(param.detach().clone(), requires_grad=param.requires_grad))


class Adapter:
    """Base adapter. Subclasses set `task` and `auto_model` (the transformers Auto class that loads the
    family for the task) and implement collate / postprocess; model_inputs and loss fit the families
    whose model takes `pixel_values` and `labels` and returns `loss` and `logits`."""

    task: str = ""
    auto_model: str = ""
    # Parameter-name prefixes of the pretrained feature extractor: `train.backbone_lr_mult` scales
    # their learning rate. Empty: the family's own `base_model_prefix` minus nothing (see below).
    backbone_prefixes: tuple[str, ...] = ()
    # Evaluation runs the model with the labels too, so that one forward gives predictions and the
    # split's loss (`val/loss`); False for a family whose loss cannot be computed in evaluation mode.
    loss_at_evaluation: bool = True
    # config.model_type of the families served here whose training forward leaves some parameters
    # without a gradient at every step (the per-family tests check it with one backward): under
    # several processes DDP must then search each step's graph for them (find_unused_parameters),
    # a cost every other family is spared.
    unused_parameter_families: frozenset = frozenset()

    def __init__(self, model, processor, image_size: int | None = None):
        self.processor = processor

    # -- in the loader workers ----------------------------------------------------------------------
    def collate(self, samples) -> dict:
        raise NotImplementedError

    # -- on the device ------------------------------------------------------------------------------
    def model_inputs(self, batch: dict, with_labels: bool = True) -> dict:
        inputs = {"pixel_values": self.normalize(batch["pixels_uint8"])}
        if with_labels:
            inputs["labels"] = batch["labels"]
        return inputs

    @staticmethod
    def loss(outputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted total loss and the components worth logging."""
        return outputs.loss, {}

    def postprocess(self, outputs, batch: dict) -> list[dict]:
        raise NotImplementedError

    # -- the model around the adapter -----------------------------------------------------------------
    def backbone_parameter_names(self, model) -> set[str]:
        """Names of the parameters that belong to the pretrained backbone (feature extractor)."""
        return {name for name, _ in model.named_parameters() if name.startswith(self.backbone_prefixes)} if self.backbone_prefixes else set()

    def has_unused_parameters(self, model) -> bool:
        """Whether a training step of `model` leaves parameters without a gradient: a family that
        does by design, or a backbone whose out_features stop before its last stage (that stage's
        weights then feed nothing)."""
        config = model.config
        if config.model_type in self.unused_parameter_families:
            return True
        backbone = getattr(config, "backbone_config", None)
        out_features, stages = getattr(backbone, "out_features", None), getattr(backbone, "stage_names", None)
        return bool(out_features and stages and stages[-1] not in out_features)

    def save(self, folder) -> None:
        """What inference needs besides the weights: the image processor (and any tokenizer)."""
        self.processor.save_pretrained(folder)
