"""Random-init DETR-line models (DETR, Table Transformer, Conditional DETR, DAB-DETR, MaskFormer's
DETR decoder) are drawn as their reference code draws them (object queries N(0, 1), the
transformer's matrices xavier-uniform; transformers draws N(0, 0.02)): their query slots then predict
different things, in evaluation mode too, where no dropout noise tells them apart."""
from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from cvengine.adapters import load_model
from cvengine.adapters.loading import REFERENCE_INIT

CASES = [("detection", "detr"), ("detection", "table-transformer"), ("detection", "conditional_detr"), ("detection", "dab-detr"),
         ("instance_segmentation", "detr"), ("panoptic_segmentation", "detr"), ("instance_segmentation", "maskformer")]
NAMES = [str(i) for i in range(10)]


def _slot_spread(model) -> float:
    """Spread of the class logits (B, Q, C) across the Q query slots over their spread across the C
    classes, in evaluation mode on two random images: ~1e-5 when every slot predicts the same thing."""
    model.eval()
    with torch.no_grad():
        outputs = model(pixel_values=torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(0)))
    logits = outputs.class_queries_logits if hasattr(outputs, "class_queries_logits") else outputs.logits
    return (logits.std(1).mean() / logits.std(2).mean()).item()


@pytest.mark.parametrize("task, family", CASES, ids=[f"{t}-{f}" for t, f in CASES])
@pytest.mark.parametrize("pretrained", [True, False], ids=["tiny-checkpoint", "random-init"])
def test_query_slots_of_a_random_init_model_differ(task, family, pretrained, tiny_model):
    model = load_model(tiny_model(task, family), pretrained, task, NAMES).model
    attribute = REFERENCE_INIT[family][0]
    queries = next(p for name, p in model.named_parameters() if name.endswith(f"{attribute}.weight"))
    assert 0.8 < queries.std().item() < 1.2
    spread = _slot_spread(model)
    print(f"{task} {family}: spread across slots / across classes = {spread:.4f}")
    assert spread > 1e-3  # 7e-6 to 3e-5 with transformers' draws


def test_weights_missing_from_a_checkpoint_are_drawn_as_reference_and_the_rest_is_kept(tiny_model, tmp_path):
    folder = tmp_path / "without-queries"
    shutil.copytree(tiny_model("instance_segmentation", "detr"), folder)
    state = load_file(folder / "model.safetensors")
    missing = {k for k in state if "query_position_embeddings" in k or ".decoder.layers.0.encoder_attn.q_proj.weight" in k}
    assert len(missing) == 2
    for key in missing:
        state[key] = torch.zeros_like(state[key])  # not loaded: any value would do
    save_file({k: v for k, v in state.items() if k not in missing}, folder / "model.safetensors", metadata={"format": "pt"})

    loaded = dict(load_model(str(folder), True, "instance_segmentation", NAMES).model.named_parameters())
    queries, projection = sorted(missing, key=lambda k: "query_position" not in k)
    assert 0.8 < loaded[queries].std().item() < 1.2
    bound = (6 / sum(loaded[projection].shape)) ** 0.5  # xavier-uniform: U(-bound, bound), std bound / sqrt(3)
    assert loaded[projection].abs().max().item() <= bound and loaded[projection].std().item() > 0.8 * bound / 3**0.5
    assert all(torch.equal(loaded[k], v) for k, v in state.items() if k not in missing and k in loaded)


def test_dab_detr_box_head_keeps_the_references_zero_last_layer(tiny_model):
    """DAB-DETR's box head lives inside transformers' decoder (shared for anchor refinement); the
    reference attaches it after its xavier pass and zeroes its last layer, so it is not re-drawn."""
    model = load_model(tiny_model("detection", "dab-detr"), False, "detection", NAMES).model
    head = model.model.decoder.bbox_embed
    assert torch.count_nonzero(head.layers[-1].weight) == 0 and torch.count_nonzero(head.layers[-1].bias) == 0
    # ... while the decoder's own matrices are xavier-uniform: U(-bound, bound), std bound / sqrt(3).
    matrix = model.model.decoder.layers[0].self_attn.self_attn_query_content_proj.weight
    bound = (6 / sum(matrix.shape)) ** 0.5
    assert matrix.abs().max().item() <= bound and matrix.std().item() > 0.8 * bound / 3**0.5


@pytest.mark.parametrize("family, head", [("deformable_detr", "class_embed"), ("conditional_detr", "class_labels_classifier")])
def test_focal_loss_class_heads_start_at_the_references_prior(family, head, tiny_model, tmp_path):
    """Deformable DETR's and Conditional DETR's reference code start the class bias at
    log(0.01 / 0.99) (transformers: 0): in a random-init model and in a head re-initialised for a data
    set's classes; a checkpoint's head that knows the classes keeps its own bias."""
    import json
    import math

    prior = -math.log(99)

    def class_biases(model):
        return {k: v for k, v in model.named_parameters() if k.startswith(head + ".") and k.endswith(".bias")}

    random_init = class_biases(load_model(tiny_model("detection", family), False, "detection", NAMES).model)
    assert random_init and all(torch.allclose(b, torch.full_like(b, prior)) for b in random_init.values())

    folder = tmp_path / "trained-head"
    shutil.copytree(tiny_model("detection", family), folder)
    state = load_file(folder / "model.safetensors")
    for key in [k for k in state if k.startswith(head + ".") and k.endswith(".bias")]:
        state[key] = torch.linspace(-1, 1, state[key].numel())  # a head the checkpoint trained
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    kept = class_biases(load_model(str(folder), True, "detection", NAMES).model)
    assert all(torch.equal(b.detach(), torch.linspace(-1, 1, b.numel())) for b in kept.values())

    config = json.loads((folder / "config.json").read_text())
    config["id2label"] = {str(i): f"other-{i}" for i in range(10)}
    config["label2id"] = {f"other-{i}": i for i in range(10)}
    (folder / "config.json").write_text(json.dumps(config))
    reinitialised = class_biases(load_model(str(folder), True, "detection", NAMES).model)
    assert all(torch.allclose(b, torch.full_like(b, prior)) for b in reinitialised.values())
