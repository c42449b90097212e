"""Loading a model (hub id or local folder) for a task, with a head sized for the data set's classes.

A pretrained checkpoint's classification head is kept when it knows the data set's classes: when
every class name of the data set is among the checkpoint's `id2label` names (any order, any subset,
e.g. a COCO-pretrained DETR on COCO data), the head rows are taken by name. Otherwise the head is
re-initialised for the data set's classes, and one line says which tensors were.
"""
from __future__ import annotations

import logging
import math
import os
import re
from typing import NamedTuple

from cvengine.errors import RecipeError
from cvengine.recipe import looks_like_path

log = logging.getLogger("cvengine")


# Families whose checkpoints may name a head without a loss, and the trainable head to load instead.
TRAINABLE_HEAD = {"deit": "DeiTForImageClassification", "levit": "LevitForImageClassification"}


# Random-init weights drawn as the family's reference code draws them, where transformers'
# _init_weights draws N(0, init_std = 0.02) for every Linear and Embedding. DETR (`models/detr.py`,
# `models/transformer.py`; Table Transformer runs DETR's code), Conditional DETR
# (Atten4Vis/ConditionalDETR, same files), DAB-DETR (IDEA-Research/DAB-DETR, `models/DAB_DETR/`)
# and MaskFormer (its DETR decoder): the query embeddings N(0, 1) (`nn.Embedding`, never
# re-initialised; DAB-DETR's 4-d anchor boxes included) and every matrix of the transformer
# xavier-uniform (`Transformer._reset_parameters`). The decoder's queries start at zero and differ only through those
# embeddings and the attention they steer: with transformers' draws, every query slot of a random-init
# model predicts the same thing (spread across slots ~1e-5 of the spread across classes), training
# tells the slots apart only through dropout noise, and evaluation, without dropout, collapses them
# again into one repeated prediction.
# model_type -> (query embedding attribute, names of the transformer's modules, modules inside them
# that the reference attaches after its xavier pass: DAB-DETR's box head, shared with the decoder for
# its anchor refinement, keeps transformers' draws with the last layer zero as in the reference)
REFERENCE_INIT = {
    "detr": ("query_position_embeddings", ("model.encoder", "model.decoder"), ()),
    "table-transformer": ("query_position_embeddings", ("model.encoder", "model.decoder"), ()),
    "conditional_detr": ("query_position_embeddings", ("model.encoder", "model.decoder"), ()),
    "dab-detr": ("query_refpoint_embeddings", ("model.encoder", "model.decoder"), ("model.decoder.bbox_embed",)),
    # facebookresearch/MaskFormer `transformer_predictor.py`: `nn.Embedding` queries and DETR's
    # Transformer (no encoder layers by default) with its xavier pass.
    "maskformer": ("queries_embedder", ("model.transformer_module.decoder",), ()),
}


# Focal-loss detectors whose reference code starts the class head's bias at the prior
# log(p / (1 - p)), p = 0.01 (every class unlikely on every query), where transformers leaves it at 0
# (p = 0.5 for each of queries x classes, so that confident negatives dominate the first steps'
# loss): Deformable DETR (fundamentalvision/Deformable-DETR `models/deformable_detr.py`) and
# Conditional DETR (`models/conditional_detr.py`). A head re-initialised for a data set's classes gets
# it too. model_type -> the class head (a Linear, or a ModuleList of per-layer Linears)
CLASS_PRIOR_HEADS = {"deformable_detr": "class_embed", "conditional_detr": "class_labels_classifier"}
CLASS_PRIOR = 0.01


def init_as_reference(model, new_keys=None) -> list[str]:
    """Draw the weights of `model` that its family's reference code draws otherwise than transformers
    (REFERENCE_INIT, CLASS_PRIOR_HEADS), those among `new_keys` (parameter names the checkpoint did
    not provide or that were re-initialised for the data set's classes; None: a random-init model).
    Returns the parameter names drawn."""
    import torch

    model_type = model.config.model_type
    drawn = []
    if model_type in CLASS_PRIOR_HEADS:
        head = CLASS_PRIOR_HEADS[model_type]
        bias = -math.log((1 - CLASS_PRIOR) / CLASS_PRIOR)
        for key, parameter in model.named_parameters():
            if re.fullmatch(rf"{re.escape(head)}(\.\d+)?\.bias", key) and (new_keys is None or key in new_keys):
                with torch.no_grad():
                    parameter.fill_(bias)
                drawn.append(key)
    if model_type not in REFERENCE_INIT:
        return drawn
    queries, transformer, attached_later = REFERENCE_INIT[model_type]
    # DAB-DETR's random_refpoints_xy: x, y of the anchors uniform in (0, 1) through inverse sigmoid,
    # frozen; transformers draws those as the reference does.
    keep_queries = bool(getattr(model.config, "random_refpoints_xy", False))
    for module_name, module in model.named_modules():
        is_queries = module_name.rsplit(".", 1)[-1] == queries and isinstance(module, torch.nn.Embedding)
        in_transformer = any(module_name == t or module_name.endswith("." + t) for t in transformer)
        if not (is_queries or in_transformer) or (is_queries and keep_queries):
            continue
        for name, parameter in module.named_parameters():
            key = f"{module_name}.{name}"
            if parameter.dim() < 2 or (new_keys is not None and key not in new_keys):
                continue
            if any(f".{prefix}." in f".{key}" for prefix in attached_later):
                continue
            with torch.no_grad():
                torch.nn.init.normal_(parameter) if is_queries else torch.nn.init.xavier_uniform_(parameter)
            drawn.append(key)
    return drawn


class LoadedModel(NamedTuple):
    model: object
    processor: object
    model_type: str
    # Names of the head tensors that were randomly initialised for the data set's classes (empty when
    # the checkpoint's head was kept, or when the whole model is random: pretrained = false).
    reinitialised: list


def load_config(name: str):
    from transformers import AutoConfig

    if looks_like_path(name) and not os.path.isdir(os.path.expanduser(name)):
        # Tried as a hub id, such a name costs a round of network retries and an error about the hub.
        raise RecipeError(f"model.name '{name}': no such folder ({os.path.abspath(os.path.expanduser(name))}); create it or give a hub id such as 'org/name'")
    try:
        return AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as err:
        where = "local folder" if os.path.isdir(name) else "hub id"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RecipeError(f"model.name '{name}' ({where}) could not be loaded: {first}") from None


def _normalised(name) -> str:
    return str(name).strip().lower()


def checkpoint_label_rows(config, class_names: list[str]) -> list[int] | None:
    """For each data set class, the row of the checkpoint's head that scores it (matched by name,
    case and surrounding spaces ignored), or None when some class is unknown to the checkpoint."""
    id2label = getattr(config, "id2label", None) or {}
    by_name = {}
    for i in sorted(int(k) for k in id2label):
        by_name.setdefault(_normalised(id2label[i] if i in id2label else id2label[str(i)]), i)
    rows = [by_name.get(_normalised(n)) for n in class_names]
    return None if any(r is None for r in rows) else rows


def _keep_head_rows(model, original, mismatched, rows: list[int], old_count: int, new_count: int) -> bool:
    """Copy, into the re-sized head tensors of `model`, the rows of `original` (the checkpoint with its
    own head) that score the data set's classes; extra trailing rows (DETR's "no object", RT-DETR's
    denoising padding class) are kept as they are. False when a tensor does not fit that pattern."""
    import torch

    source = original.state_dict()
    target = model.state_dict()
    plans = []
    for key, old_shape, new_shape in mismatched:
        if key not in source or key not in target:
            return False
        dims = [d for d, (a, b) in enumerate(zip(old_shape, new_shape)) if a != b]
        if len(old_shape) != len(new_shape) or len(dims) != 1:
            return False
        d = dims[0]
        extra = old_shape[d] - old_count
        if extra < 0 or new_shape[d] - new_count != extra:
            return False
        index = torch.tensor(rows + [old_count + j for j in range(extra)], dtype=torch.long)
        plans.append((key, d, index))
    with torch.no_grad():
        for key, d, index in plans:
            target[key].copy_(source[key].index_select(d, index))
    return True


def _is_generic(id2label: dict) -> bool:
    """transformers' placeholder names (LABEL_0, LABEL_1, …): the checkpoint says nothing about its classes."""
    return all(str(v) == f"LABEL_{int(k)}" for k, v in id2label.items())


def _head_keys(auto, config, num_labels: int) -> dict[str, int]:
    """{state-dict key: the dimension that grows with the number of classes} of the model's head,
    found by building the architecture twice on the meta device (no memory, no weights) with
    `num_labels` and `num_labels + 1` classes and comparing shapes."""
    import copy

    import torch

    shapes = []
    for n in (num_labels, num_labels + 1):
        cfg = copy.deepcopy(config)
        cfg.num_labels = n
        with torch.device("meta"):
            shapes.append({k: tuple(v.shape) for k, v in auto.from_config(cfg).state_dict().items()})
    keys = {}
    for key, shape in shapes[0].items():
        other = shapes[1].get(key)
        if other is not None and other != shape:
            keys[key] = next(d for d, (a, b) in enumerate(zip(shape, other)) if a != b)
    return keys


def _same_size_head(model, auto, config, name: str, class_names: list[str]) -> list[str]:
    """The checkpoint's head has as many classes as the data set: keep it when its class names are
    the data set's (re-ordered by name if needed) or are placeholders; re-initialise it (transformers'
    own initialisation of those modules) when they name other classes. Returns the re-initialised keys."""
    import torch

    id2label = {int(k): v for k, v in (getattr(config, "id2label", None) or {}).items()}
    rows = checkpoint_label_rows(config, class_names)
    if rows == list(range(len(class_names))) or _is_generic(id2label):
        return []
    heads = _head_keys(auto, config, len(class_names))
    state = model.state_dict()
    if rows is not None:
        with torch.no_grad():
            for key, d in heads.items():
                extra = state[key].shape[d] - len(class_names)
                index = torch.tensor(rows + [len(class_names) + j for j in range(extra)], dtype=torch.long, device=state[key].device)
                state[key].copy_(state[key].index_select(d, index))
        log.info(f"model.name '{name}': the checkpoint's head kept for the data set's classes, rows re-ordered by class name")
        return []
    with torch.no_grad():
        for module_name in sorted({key.rsplit(".", 1)[0] for key in heads}):
            module = model.get_submodule(module_name)
            # transformers' initialisers skip tensors flagged as loaded from the checkpoint.
            for tensor in (*module.parameters(recurse=False), *module.buffers(recurse=False)):
                tensor._is_hf_initialized = False
            model._init_weights(module)
    return sorted(heads)


# Set from the data set's categories: a model.config value for them would contradict the data.
_CLASS_KEYS = ("num_labels", "id2label", "label2id")


def config_overrides(config, name: str, settings: dict) -> dict:
    """model.config checked against the config it changes: every key an attribute of that config
    (a typo would otherwise be stored as a new attribute and change nothing)."""
    import copy
    import difflib

    known = set(config.to_dict())
    for key in settings:
        if key in _CLASS_KEYS:
            raise RecipeError(f"model.config.{key}: the classes come from the data set's categories; remove the key")
        if key not in known and not hasattr(config, key):
            close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.7)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise RecipeError(f"model.config.{key}: model '{name}' ({config.model_type}) has no config attribute '{key}'{hint}")
    # transformers' typed configs check each value on assignment (e.g. DETR's mask_loss_coefficient is an int).
    trial = copy.deepcopy(config)
    for key, value in settings.items():
        try:
            setattr(trial, key, value)
        except Exception as err:  # huggingface_hub's StrictDataclassFieldValidationError, TypeError, ValueError
            reason = " ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__
            raise RecipeError(f"model.config.{key} = {value!r} is refused by {type(config).__name__}: {reason}") from None
    return dict(settings)


def load_model(name: str, pretrained: bool, task: str, class_names: list[str], multi_label: bool = False, config: dict | None = None) -> LoadedModel:
    """(model, processor, config.model_type, re-initialised head tensors) for `name` (hub id or local
    folder) with a head of len(class_names) classes, id2label set to the dataset's class names.
    multi_label (classification only): sigmoid + binary cross-entropy over independent classes.
    config: attributes of the model's config set before it is built (model.config)."""
    from transformers import AutoImageProcessor

    from cvengine.adapters import auto_model_class, get_family

    settings = config or {}
    config = load_config(name)
    get_family(task, config.model_type, name)
    id2label = {i: n for i, n in enumerate(class_names)}
    label2id = {n: i for i, n in id2label.items()}
    overrides = {**config_overrides(config, name, settings), "num_labels": len(class_names), "id2label": id2label, "label2id": label2id}
    if multi_label:
        if task != "classification":
            raise RecipeError(f"model.multi_label = true applies to classification only, not {task}")
        overrides["problem_type"] = "multi_label_classification"
    elif task == "classification" and getattr(config, "problem_type", None) == "multi_label_classification":
        overrides["problem_type"] = "single_label_classification"
    if task == "classification" and config.model_type in TRAINABLE_HEAD:
        # Distilled DeiT / LeViT checkpoints name their inference-only head (WithTeacher: no labels,
        # no loss); the trainable head with the same backbone weights is *ForImageClassification.
        overrides["architectures"] = [TRAINABLE_HEAD[config.model_type]]
    # The checkpoint (or random init) provides every weight: never fetch separate backbone weights.
    if hasattr(config, "use_pretrained_backbone"):
        overrides["use_pretrained_backbone"] = False
    if config.model_type == "oneformer":
        # Builds the text branch that its training loss needs (inference checkpoints leave it out).
        overrides["is_training"] = True
    auto = auto_model_class(task, config.model_type)
    reinitialised: list = []
    if pretrained:
        try:
            model, info = auto.from_pretrained(name, ignore_mismatched_sizes=True, output_loading_info=True, **overrides)
        except Exception as err:  # no weights file, a truncated one (SafetensorError), a torn download
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
            raise RecipeError(f"model.name '{name}': its weights could not be loaded ({first}); give a complete checkpoint, or set model.pretrained = false to train from random weights") from None
        mismatched = list(info.get("mismatched_keys") or [])
        if mismatched:
            rows = checkpoint_label_rows(config, class_names)
            kept = False
            if rows is not None:
                keep = {k: v for k, v in overrides.items() if k not in ("num_labels", "id2label", "label2id")}
                original = auto.from_pretrained(name, **keep)
                kept = _keep_head_rows(model, original, mismatched, rows, len(config.id2label), len(class_names))
                del original
            if kept:
                log.info(f"model.name '{name}': the checkpoint's head kept for the data set's {len(class_names)} classes (rows taken by class name)")
            else:
                reinitialised = sorted(key for key, _, _ in mismatched)
        else:
            reinitialised = _same_size_head(model, auto, config, name, class_names)
        init_as_reference(model, set(info.get("missing_keys") or []) | set(reinitialised))
        if reinitialised:
            log.warning(
                f"model.name '{name}': head re-initialised for the data set's {len(class_names)} classes (the checkpoint's "
                f"{len(config.id2label)} classes do not include them all): {', '.join(reinitialised[:6])}{' …' if len(reinitialised) > 6 else ''}"
            )
    else:
        for key, value in overrides.items():
            setattr(config, key, value)
        model = auto.from_config(config)
        init_as_reference(model)
    try:
        processor = AutoImageProcessor.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise RecipeError(f"model.name '{name}': no image processor (preprocessor_config.json) could be loaded: {str(err).splitlines()[0]}") from None
    return LoadedModel(model, processor, config.model_type, reinitialised)
