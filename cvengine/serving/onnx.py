"""ONNX export of a model folder, checked against PyTorch with ONNX Runtime.

The graph takes what the adapter's `model_inputs` gives the model at inference (`pixel_values`
(B, 3, H, W) float, and `pixel_mask` (B, H, W) int64 for families that accept it) and returns the raw
outputs the task names in `onnx_outputs` (detection: logits (B, Q, C), pred_boxes (B, Q, 4)), so that
the adapter's own post-processing runs unchanged on them. Batch is dynamic; height and width are
dynamic where the family's graph allows it (checked by running a second, differently sized batch).
"""
from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from cvengine.errors import CvengineError

log = logging.getLogger("cvengine")

# Largest |ONNX - PyTorch| accepted on any output, in the outputs' own units (logits, boxes in 0..1).
DEFAULT_TOLERANCE = 1e-3


def _require_onnx():
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise CvengineError("ONNX export needs onnx, onnxscript and onnxruntime: pip install 'cvengine[onnx]'") from None


class _RawOutputs(torch.nn.Module):
    """The model with keyword inputs and a tuple of named raw outputs, as the exporter wants it."""

    def __init__(self, model, input_names: list[str], output_names: tuple[str, ...]):
        super().__init__()
        self.model = model
        self.input_names = input_names
        self.output_names = output_names

    def forward(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None = None):
        # Named parameters rather than *args: torch.export matches dynamic shapes to them by name.
        inputs = {"pixel_values": pixel_values} if pixel_mask is None else {"pixel_values": pixel_values, "pixel_mask": pixel_mask}
        outputs = self.model(**inputs)
        return tuple(getattr(outputs, name) for name in self.output_names)


def _example_images(sizes: list[tuple[int, int]], count: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in sizes[:count]]


def _inputs(predictor, images) -> tuple[dict, dict]:
    batch = predictor.batch_of(images)
    return predictor.adapter.model_inputs(batch, with_labels=False), batch


def export_onnx(model: str, output: str | Path, tolerance: float = DEFAULT_TOLERANCE, opset: int = 18) -> dict:
    """Export the model folder (or run folder / MLflow URI) `model` to `output/model.onnx` with its
    config, processor and cvengine.json; returns a summary with the parity check's max abs diff."""
    _require_onnx()
    import onnxruntime as ort

    from cvengine.serving.predictor import METADATA_FILE, ONNX_FILE, Predictor, resolve_model_dir

    model_dir = resolve_model_dir(model)
    predictor = Predictor(model_dir, device="cpu", batch_size=2)
    if predictor.is_onnx:
        raise CvengineError(f"{model_dir} is already an ONNX export")
    output_names = tuple(getattr(predictor.task, "onnx_outputs", ()))
    if not output_names:
        raise CvengineError(f"ONNX export is not available for the {predictor.task.name} task yet")
    torch_model = predictor.model.float().eval()

    # Two images of other aspect ratios give a padded batch, as at inference.
    example = _example_images([(120, 160), (160, 110)], 2, seed=0)
    inputs, _ = _inputs(predictor, example)
    input_names = list(inputs)
    if set(input_names) - {"pixel_values", "pixel_mask"}:
        raise CvengineError(f"ONNX export handles pixel_values and pixel_mask inputs; this model takes {input_names}")
    wrapper = _RawOutputs(torch_model, input_names, output_names).eval()
    args = tuple(inputs[n] for n in input_names)

    out = Path(output)
    tmp = out.with_name(f".{out.name}.exporting")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    onnx_path = tmp / ONNX_FILE
    # A batch of three at the same size tells whether the batch axis stayed dynamic; images of other
    # sizes tell whether height and width did (a shape baked into the graph fails or differs).
    other_batch = {k: torch.cat([v, v[:1]]) for k, v in inputs.items()}
    height, width = inputs["pixel_values"].shape[2:]
    generator = torch.Generator().manual_seed(1)
    other_size = {"pixel_values": torch.randn(2, 3, height + 32, width + 64, generator=generator), "pixel_mask": torch.ones(2, height + 32, width + 64, dtype=torch.int64)}
    other_size = {k: v for k, v in other_size.items() if k in inputs}
    exporter, errors, checks = None, [], {}
    # torchvision is optional: the exporter's warning per torchvision op it cannot register is noise.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    for dynamo in (True, False):
        name = "dynamo" if dynamo else "torchscript"
        try:
            _export(wrapper, args, input_names, output_names, onnx_path, opset, dynamo)
            options = ort.SessionOptions()
            # Fatal only: probing other shapes below is expected to fail on a fixed axis, and
            # onnxruntime would print each such failure as a red error line.
            options.log_severity_level = 4
            session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
            diff = _parity(session, wrapper, inputs, input_names)
        except Exception as err:  # the exporters raise many types; the first line is what helps
            text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()  # the exporter colours its messages
            errors.append(f"{name} exporter: {type(err).__name__}: {text.splitlines()[0][:300] if text else ''}")
            onnx_path.unlink(missing_ok=True)
            continue
        if diff > tolerance:
            errors.append(f"{name} exporter: output differs from PyTorch by {diff:.3g} (> tolerance {tolerance:g})")
            onnx_path.unlink(missing_ok=True)
            continue
        exporter, checks["max_abs_diff"] = name, diff
        break
    if exporter is None:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CvengineError(f"{model_dir}: the {predictor.config.model_type} model could not be exported to ONNX within tolerance; nothing was written. " + "; ".join(errors))
    for key, probe in (("dynamic_batch", other_batch), ("dynamic_size", other_size)):
        try:
            diff = _parity(session, wrapper, probe, input_names)
        except Exception:  # onnxruntime's own error types: a fixed axis got another size
            diff = float("inf")
        checks[key] = diff <= tolerance
        if checks[key]:
            checks["max_abs_diff"] = max(checks["max_abs_diff"], diff)
        else:
            log.info(f"the exported graph has a fixed {'batch size' if key == 'dynamic_batch' else 'image size'}")

    # config.json, processor and cvengine.json: the folder loads like a model folder, minus the weights.
    predictor.config.save_pretrained(tmp)
    predictor.adapter.save(tmp)
    metadata = dict(predictor.metadata)
    metadata["onnx"] = {"inputs": input_names, "outputs": list(output_names), "exporter": exporter, "opset": opset, **checks, "export_size": list(inputs["pixel_values"].shape[2:])}
    (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2))
    from cvengine.engine.checkpoint import replace_dir

    replace_dir(tmp, out)
    return {"path": str(out / ONNX_FILE), "family": predictor.config.model_type, **metadata["onnx"]}


def _export(wrapper, args, input_names, output_names, path: Path, opset: int, dynamo: bool) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            # AUTO: dynamic where the model's code allows it, static where it specialises (no error).
            auto = torch.export.Dim.AUTO
            axes = {"pixel_values": {0: auto, 2: auto, 3: auto}, "pixel_mask": {0: auto, 1: auto, 2: auto}}
            dynamic_shapes = {n: axes[n] for n in input_names}
            program = torch.onnx.export(wrapper, args, dynamo=True, input_names=input_names, output_names=list(output_names), dynamic_shapes=dynamic_shapes, opset_version=opset, optimize=True, verbose=False)
            program.save(str(path))
        else:
            axes = {"pixel_values": {0: "batch", 2: "height", 3: "width"}, "pixel_mask": {0: "batch", 1: "height", 2: "width"}}
            dynamic_axes = {n: axes[n] for n in input_names}
            dynamic_axes.update({n: {0: "batch"} for n in output_names})
            torch.onnx.export(wrapper, args, str(path), dynamo=False, input_names=input_names, output_names=list(output_names), dynamic_axes=dynamic_axes, opset_version=opset)


@torch.inference_mode()
def _parity(session, wrapper, inputs: dict, input_names: list[str]) -> float:
    expected = wrapper(*(inputs[n] for n in input_names))
    feeds = {i.name: inputs[i.name].numpy() for i in session.get_inputs()}
    got = session.run(None, feeds)
    return float(max(np.abs(e.float().numpy() - g).max() for e, g in zip(expected, got)))
