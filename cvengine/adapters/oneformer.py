"""OneFormer: Mask2Former's (mask, class) pairs conditioned on a task token, plus a text branch used
only by its training loss (query-text contrastive term).

Besides the mask-classification inputs of `mask_classification`, the model takes
  task_inputs  (B, task_seq_len) int64  tokens of "the task is {semantic|instance|panoptic}"
  text_inputs  (B, num_text, text_encoder_context_length) int64, training only: one text per
               annotated segment, "a photo with a {class name}", in class order, the rest filled with
               "a {task} photo" (as transformers' OneFormer image processor writes them),
where num_text = num_queries - text_encoder_n_ctx. Tokens are written by the CLIP tokenizer saved in
the checkpoint folder (OneFormerProcessor), padded with 0 (token id x attention mask, as the processor);
the adapter's `tokenizer` is saved with the trained model.

`config.is_training` builds the text branch, but transformers also reads it instead of
`module.training` (dropout, the text branch); a forward pre-hook sets those flags from
`model.training` so that evaluation is deterministic and needs no texts.
"""
from __future__ import annotations

import numpy as np
import torch

from cvengine.adapters.base import Family
from cvengine.adapters.mask_classification import (
    InstanceSegmentationAdapter,
    PanopticSegmentationAdapter,
    SemanticUniversalAdapter,
)
from cvengine.data.dataset import Sample
from cvengine.errors import RecipeError

# The filler text of unused text slots, per task word (transformers' wording).
_FILLER_TEXTS = {"semantic": "a semantic photo", "instance": "an instance photo", "panoptic": "an panoptic photo"}


def _sync_is_training(model, _args) -> None:
    for module in model.modules():
        if isinstance(getattr(module, "is_training", None), bool):
            module.is_training = model.training


def _load_tokenizer(model):
    from transformers import AutoTokenizer

    name = getattr(model.config, "_name_or_path", "")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError, TypeError):
        tokenizer = None
    if tokenizer is None:
        raise RecipeError(
            f"model.name '{name}': OneFormer needs its text tokenizer (tokenizer files, as OneFormerProcessor saves them) "
            "in the checkpoint folder; save the tokenizer with the model"
        )
    return tokenizer


class OneFormerInputs:
    """Adds task and text tokens to a mask-classification adapter (mixed in before it)."""

    task_word = ""  # the word of "the task is {word}": semantic, instance or panoptic
    # Its loss has a query-text contrastive term from the text branch, which evaluation switches off.
    loss_at_evaluation = False

    def __init__(self, model, processor, image_size: int | None = None):
        super().__init__(model, processor, image_size)
        config = model.config
        if not config.is_training:
            raise RecipeError("OneFormer was built without its text branch (config.is_training = false); load it through cvengine.adapters.load_model")
        self.tokenizer = _load_tokenizer(model)
        self.task_length = int(config.task_seq_len)
        self.text_length = int(config.text_encoder_context_length)
        self.num_text = int(config.num_queries - config.text_encoder_n_ctx)
        self.class_names = [config.id2label[i] for i in range(len(config.id2label))]
        if isinstance(model, torch.nn.Module):  # not for an exported graph, already in evaluation form
            model.register_forward_pre_hook(_sync_is_training)

    def _tokens(self, texts: list[str], length: int) -> torch.Tensor:
        encoded = self.tokenizer(texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
        return encoded["input_ids"] * encoded["attention_mask"]  # (len(texts), length) int64

    def _texts(self, labels: np.ndarray) -> list[str]:
        texts = [f"a photo with a {self.class_names[label]}" for label in sorted(int(v) for v in labels)]
        return (texts + [_FILLER_TEXTS[self.task_word]] * self.num_text)[: self.num_text]

    def collate(self, samples: list[Sample]) -> dict:
        batch = super().collate(samples)
        batch["task_inputs"] = self._tokens([f"the task is {self.task_word}"] * len(samples), self.task_length)  # (B, T)
        texts = [self._texts(labels.numpy()) for labels in batch["class_labels"]]
        batch["text_inputs"] = torch.stack([self._tokens(t, self.text_length) for t in texts])  # (B, num_text, L)
        return batch

    def model_inputs(self, batch: dict, with_labels: bool = True) -> dict:
        inputs = super().model_inputs(batch, with_labels)
        inputs["task_inputs"] = batch["task_inputs"]
        if with_labels:
            inputs["text_inputs"] = batch["text_inputs"]
        return inputs

    @staticmethod
    def loss(outputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return outputs.loss.reshape(()), {}  # OneFormer returns it with shape (1,)


    def save(self, folder) -> None:
        # Inference tokenizes the task text too: the tokenizer goes with the model.
        super().save(folder)
        self.tokenizer.save_pretrained(folder)


class OneFormerInstanceAdapter(OneFormerInputs, InstanceSegmentationAdapter):
    task_word = "instance"


class OneFormerPanopticAdapter(OneFormerInputs, PanopticSegmentationAdapter):
    task_word = "panoptic"


class OneFormerSemanticAdapter(OneFormerInputs, SemanticUniversalAdapter):
    task_word = "semantic"


def tiny_oneformer(side: int = 128):
    """(config, OneFormerProcessor) of a small random-init OneFormer with a Swin backbone, at a fixed
    side x side input; the CLIP tokenizer has a byte alphabet and no merges (no download)."""
    import transformers as T
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    alphabet = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab.update({c + "</w>": len(alphabet) + i for i, c in enumerate(alphabet)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    tokenizer = T.CLIPTokenizer(vocab=vocab, merges=[])
    swin = T.SwinConfig(image_size=side, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4, out_features=["stage1", "stage2", "stage3", "stage4"])
    # Text width 64 gives one attention head in the text encoder (width // 64).
    config = T.OneFormerConfig(
        backbone_config=swin, conv_dim=64, mask_dim=64, hidden_dim=64, text_encoder_width=64, encoder_feedforward_dim=64, dim_feedforward=64,
        encoder_layers=1, decoder_layers=2, num_attention_heads=2, num_queries=20, train_num_points=256, task_seq_len=16,
        text_encoder_context_length=16, text_encoder_num_layers=1, text_encoder_n_ctx=4, query_dec_layers=1, is_training=True,
        text_encoder_vocab_size=len(tokenizer),
    )
    image_processor = T.OneFormerImageProcessorPil(size={"height": side, "width": side}, size_divisor=32, do_reduce_labels=False, ignore_index=255, num_text=config.num_queries - config.text_encoder_n_ctx)
    return config, T.OneFormerProcessor(image_processor=image_processor, tokenizer=tokenizer, max_seq_length=16, task_seq_length=16)


FAMILIES = [
    Family("oneformer", "instance_segmentation", OneFormerInstanceAdapter, tiny_oneformer),
    Family("oneformer", "panoptic_segmentation", OneFormerPanopticAdapter, tiny_oneformer),
    Family("oneformer", "semantic_segmentation", OneFormerSemanticAdapter, tiny_oneformer),
]
