"""The adapter registry: task -> Hugging Face `config.model_type` -> adapter class.

Explicit and greppable. A family is listed here only when a test trains a tiny model of it through
the whole path (tests/test_adapters.py is parametrised over this dict).
"""
from __future__ import annotations

import os

from cvengine.adapters.classification import ImageClassificationAdapter
from cvengine.adapters.detection import DetrFamilyAdapter
from cvengine.adapters.oneformer import OneFormerInstanceAdapter, OneFormerPanopticAdapter, OneFormerSemanticAdapter
from cvengine.adapters.semantic import SemanticSegmentationAdapter
from cvengine.adapters.universal_segmentation import InstanceSegmentationAdapter, PanopticSegmentationAdapter, SemanticUniversalAdapter
from cvengine.errors import RecipeError

ADAPTERS: dict[str, dict[str, type]] = {
    "detection": {
        "detr": DetrFamilyAdapter,
        "conditional_detr": DetrFamilyAdapter,
        "deformable_detr": DetrFamilyAdapter,
        "dab-detr": DetrFamilyAdapter,
        "rt_detr": DetrFamilyAdapter,
        "rt_detr_v2": DetrFamilyAdapter,
        "d_fine": DetrFamilyAdapter,
        "yolos": DetrFamilyAdapter,
    },
    "classification": {
        "vit": ImageClassificationAdapter,
        "deit": ImageClassificationAdapter,
        "beit": ImageClassificationAdapter,
        "dinov2": ImageClassificationAdapter,
        "resnet": ImageClassificationAdapter,
        "convnext": ImageClassificationAdapter,
        "convnextv2": ImageClassificationAdapter,
        "swin": ImageClassificationAdapter,
        "efficientnet": ImageClassificationAdapter,
        "mobilenet_v2": ImageClassificationAdapter,
        "mobilevit": ImageClassificationAdapter,
        # timm models through transformers' TimmWrapper (needs `pip install cvengine[timm]`).
        "timm_wrapper": ImageClassificationAdapter,
    },
    "semantic_segmentation": {
        "segformer": SemanticSegmentationAdapter,
        "upernet": SemanticSegmentationAdapter,
        "dpt": SemanticSegmentationAdapter,
        "mobilevit": SemanticSegmentationAdapter,
        "beit": SemanticSegmentationAdapter,
        # Mask-classification models in semantic mode (AutoModelForUniversalSegmentation).
        "mask2former": SemanticUniversalAdapter,
        "maskformer": SemanticUniversalAdapter,
        "oneformer": OneFormerSemanticAdapter,
    },
    "instance_segmentation": {
        "mask2former": InstanceSegmentationAdapter,
        "maskformer": InstanceSegmentationAdapter,
        "oneformer": OneFormerInstanceAdapter,
    },
    "panoptic_segmentation": {
        "mask2former": PanopticSegmentationAdapter,
        "maskformer": PanopticSegmentationAdapter,
        "oneformer": OneFormerPanopticAdapter,
    },
}


class _SemanticAutoModel:
    """AutoModelForSemanticSegmentation, or AutoModelForUniversalSegmentation for the families that
    segment by mask classification (they have no semantic-segmentation head class)."""

    @staticmethod
    def _auto_for(config):
        import transformers
        from transformers.models.auto.modeling_auto import MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES

        if config.model_type in MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES:
            return transformers.AutoModelForSemanticSegmentation
        return transformers.AutoModelForUniversalSegmentation

    @classmethod
    def from_config(cls, config, **kwargs):
        return cls._auto_for(config).from_config(config, **kwargs)

    @classmethod
    def from_pretrained(cls, name, **kwargs):
        return cls._auto_for(load_config(str(name))).from_pretrained(name, **kwargs)


def _auto_model_class(task: str):
    import transformers

    return {
        "detection": transformers.AutoModelForObjectDetection,
        "classification": transformers.AutoModelForImageClassification,
        "semantic_segmentation": _SemanticAutoModel,
        "instance_segmentation": transformers.AutoModelForUniversalSegmentation,
        "panoptic_segmentation": transformers.AutoModelForUniversalSegmentation,
    }[task]


def supported_families(task: str) -> list[str]:
    return sorted(ADAPTERS.get(task, {}))


def load_config(name: str):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as err:
        where = "local folder" if os.path.isdir(name) else "hub id"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RecipeError(f"model.name '{name}' ({where}) could not be loaded: {first}") from None


def adapter_class(task: str, model_type: str, name: str = "") -> type:
    families = ADAPTERS.get(task, {})
    if model_type not in families:
        raise RecipeError(
            f"model.name '{name}' is a '{model_type}' model, which cvengine does not support for {task}; "
            f"supported families: {', '.join(sorted(families)) or 'none yet'}"
        )
    return families[model_type]


def load_model(name: str, pretrained: bool, task: str, class_names: list[str], multi_label: bool = False):
    """(model, processor, config.model_type) for `name` (hub id or local folder) with a head of
    len(class_names) classes, id2label set to the dataset's class names. multi_label (classification
    only): sigmoid + binary cross-entropy over independent classes."""
    from transformers import AutoImageProcessor

    config = load_config(name)
    adapter_class(task, config.model_type, name)
    id2label = {i: n for i, n in enumerate(class_names)}
    label2id = {n: i for i, n in id2label.items()}
    overrides = {"num_labels": len(class_names), "id2label": id2label, "label2id": label2id}
    if multi_label:
        if task != "classification":
            raise RecipeError(f"model.multi_label = true applies to classification only, not {task}")
        overrides["problem_type"] = "multi_label_classification"
    elif task == "classification" and getattr(config, "problem_type", None) == "multi_label_classification":
        overrides["problem_type"] = "single_label_classification"
    if task == "classification" and config.model_type == "deit":
        # Distilled DeiT checkpoints name their inference-only head (WithTeacher: no labels, no
        # loss); the trainable head with the same backbone weights is DeiTForImageClassification.
        overrides["architectures"] = ["DeiTForImageClassification"]
    # The checkpoint (or random init) provides every weight: never fetch separate backbone weights.
    if hasattr(config, "use_pretrained_backbone"):
        overrides["use_pretrained_backbone"] = False
    if config.model_type == "oneformer":
        # Builds the text branch that its training loss needs (inference checkpoints leave it out).
        overrides["is_training"] = True
    auto = _auto_model_class(task)
    if pretrained:
        model = auto.from_pretrained(name, ignore_mismatched_sizes=True, **overrides)
    else:
        for key, value in overrides.items():
            setattr(config, key, value)
        model = auto.from_config(config)
    try:
        processor = AutoImageProcessor.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise RecipeError(f"model.name '{name}': no image processor (preprocessor_config.json) could be loaded: {str(err).splitlines()[0]}") from None
    return model, processor, config.model_type
