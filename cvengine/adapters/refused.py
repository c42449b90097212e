"""Families of transformers' Auto mappings that cvengine deliberately does not serve, each with the
reason a user would need to hear, and the coverage of the installed transformers per task.

Every `model_type` of the Auto mappings a task draws from (TASK_MAPPINGS) must be either registered
in `cvengine.adapters` for that task or listed in REFUSED: `tests/test_coverage.py` fails otherwise,
so a transformers upgrade that adds a family shows up as a failing test, not as a silent gap.
`python -m cvengine.models --coverage` prints the table.
"""
from __future__ import annotations

# task -> the names of the `transformers.models.auto.modeling_auto` mappings whose families could
# train for it. Mask-classification models (universal segmentation) serve all three segmentation tasks.
TASK_MAPPINGS: dict[str, tuple[str, ...]] = {
    "detection": ("MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES",),
    "classification": ("MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES",),
    "semantic_segmentation": ("MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES", "MODEL_FOR_UNIVERSAL_SEGMENTATION_MAPPING_NAMES"),
    "instance_segmentation": ("MODEL_FOR_INSTANCE_SEGMENTATION_MAPPING_NAMES", "MODEL_FOR_UNIVERSAL_SEGMENTATION_MAPPING_NAMES"),
    "panoptic_segmentation": ("MODEL_FOR_UNIVERSAL_SEGMENTATION_MAPPING_NAMES",),
}

ALL_TASKS = "*"

_NO_TRAINING = "transformers' port is inference-only: its forward raises on labels ('does not support training'), so there is no loss to train with"
_OCR_DET = (
    "text detector (DB-style): outputs a text-probability map, not boxes and classes; its polygons come from "
    "PaddleOCR's own post-processing and it has no loss in transformers"
)
_NEEDS_TEXT = "vision-language model scoring text prompts, not a head over image features"

# (task or ALL_TASKS, model_type) -> why cvengine does not serve it.
REFUSED: dict[tuple[str, str], str] = {
    # -- detection ------------------------------------------------------------------------------------
    ("detection", "pp_doclayout_v2"): f"document-layout detector; {_NO_TRAINING}",
    ("detection", "pp_doclayout_v3"): f"document-layout detector; {_NO_TRAINING}",
    ("detection", "pp_doclayout_v4"): f"document-layout detector; {_NO_TRAINING}",
    ("detection", "pp_ocrv5_mobile_det"): _OCR_DET,
    ("detection", "pp_ocrv5_server_det"): _OCR_DET,
    ("detection", "pp_ocrv6_medium_det"): _OCR_DET,
    ("detection", "pp_ocrv6_small_det"): _OCR_DET,
    # -- classification -------------------------------------------------------------------------------
    ("classification", "shieldgemma2"): f"{_NEEDS_TEXT}: a Gemma 3 safety checker answering yes/no to policy prompts",
    ("classification", "imagegpt"): "takes colour-cluster token ids (input_ids from its 512-colour quantiser), not pixel_values: a generative pixel language model",
    ("classification", "siglip2"): "NaFlex vision tower: takes patch sequences with pixel_attention_mask and spatial_shapes from its own processor, not a batch of resized images",
    ("classification", "dinat"): "needs the `natten` neighbourhood-attention kernels package at run time (transformers requires_backends), a compiled extension tied to specific torch builds",
    ("classification", "pp_lcnet"): "no loss in transformers (its forward takes no labels): an inference port of PaddleOCR's orientation / table classifiers",
    # -- segmentation ---------------------------------------------------------------------------------
    ("semantic_segmentation", "tipsv2_dpt"): "transformers' port raises 'Training is not yet supported' when given labels",
    (ALL_TASKS, "videomt"): "video model: its input is pixel_values_videos (B, T, 3, H, W) clips segmented with queries carried across frames, not single images",
}


def refusal(task: str, model_type: str) -> str | None:
    return REFUSED.get((task, model_type)) or REFUSED.get((ALL_TASKS, model_type))


def mapping_families(task: str) -> dict[str, str]:
    """{model_type: transformers class name(s)} of the installed transformers' mappings for `task`."""
    from transformers.models.auto import modeling_auto

    families: dict[str, str] = {}
    for name in TASK_MAPPINGS[task]:
        for model_type, classes in getattr(modeling_auto, name).items():
            families.setdefault(model_type, classes if isinstance(classes, str) else ", ".join(classes))
    return families


def coverage() -> dict[str, list[tuple[str, str, str]]]:
    """{task: [(model_type, "supported" | "refused" | "MISSING", adapter name or reason)]} over the
    installed transformers' mappings, plus registered families that no mapping lists (timm etc.)."""
    from cvengine.adapters import ADAPTERS

    table: dict[str, list[tuple[str, str, str]]] = {}
    for task in TASK_MAPPINGS:
        served = ADAPTERS.get(task, {})
        rows = []
        for model_type in sorted(set(mapping_families(task)) | set(served)):
            if model_type in served:
                rows.append((model_type, "supported", served[model_type].adapter.__name__))
            elif refusal(task, model_type):
                rows.append((model_type, "refused", refusal(task, model_type)))
            else:
                rows.append((model_type, "MISSING", "neither registered nor refused"))
        table[task] = rows
    return table
