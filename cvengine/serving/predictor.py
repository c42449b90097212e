"""A trained model as a function of raw images: the adapter's own resize, normalisation and
post-processing around a PyTorch model or an ONNX Runtime session.

A model folder is what the engine writes as `<run>/model/` (config.json, weights,
preprocessor_config.json, cvengine.json) or what `python -m cvengine.export --format onnx` writes
(the same files with model.onnx in place of the weights).
"""
from __future__ import annotations

import inspect
import json
import logging
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Iterable, Sequence

import numpy as np
import torch

from cvengine.data.dataset import Sample
from cvengine.errors import CvengineError

log = logging.getLogger("cvengine")

METADATA_FILE = "cvengine.json"
ONNX_FILE = "model.onnx"


# The task of a model folder saved by other tools (a hub checkpoint), from its head class, as the
# Hugging Face pipelines pick one: universal segmentation models answer with panoptic segments.
TASK_OF_HEAD = (
    ("ForObjectDetection", "detection"),
    ("ForImageClassification", "classification"),
    ("ForSemanticSegmentation", "semantic_segmentation"),
    ("ForInstanceSegmentation", "instance_segmentation"),
    ("ForUniversalSegmentation", "panoptic_segmentation"),
    ("DetrForSegmentation", "panoptic_segmentation"),
)


def task_of_architecture(config) -> str | None:
    architectures = getattr(config, "architectures", None) or []
    return next((task for head, task in TASK_OF_HEAD for arch in architectures if arch.endswith(head)), None)


def read_metadata(model_dir: Path, config) -> dict:
    """cvengine.json of a model folder; for a folder without one (a hub checkpoint, or saved by other
    tools), the task from the architecture name and the labels of config.json (id2label) with
    category id = label id."""
    path = model_dir / METADATA_FILE
    if path.exists():
        return json.loads(path.read_text())
    task = task_of_architecture(config)
    if task is None:
        architectures = " ".join(getattr(config, "architectures", None) or [])
        raise CvengineError(f"{model_dir}: no {METADATA_FILE}; cannot tell the task of a '{architectures or config.model_type}' model. Use the model/ folder a cvengine run wrote")
    written = json.loads((model_dir / "config.json").read_text()) if (model_dir / "config.json").is_file() else {}
    if not written.get("id2label"):
        # transformers then assumes two labels, and loading a head of any other size fails.
        raise CvengineError(f"{model_dir / 'config.json'} has no id2label: the model's class names are unknown; add id2label (label id -> name) to it, or use the model/ folder a cvengine run wrote")
    names = [config.id2label[i] for i in sorted(config.id2label)]
    log.warning(f"{model_dir}: no {METADATA_FILE}; {task} model, category ids are taken to equal the model's label ids")
    return {"task": task, "model_family": config.model_type, "class_names": names, "label_to_category_id": list(range(len(names))), "categories": []}


def resolve_model_dir(model: str | os.PathLike) -> Path:
    """A local model folder for PATH (a run folder, its model/ folder, an ONNX export folder) or an
    MLflow URI (runs:/…, models:/NAME@ALIAS, …) of a model cvengine logged."""
    text = str(model)
    if "://" in text or text.startswith(("runs:/", "models:/")):
        return _download_mlflow_model(text)
    path = Path(text)
    if not path.exists() and _looks_like_hub_id(text):
        path = _download_hub_model(text)
    if path.is_dir() and (path / "recipe.toml").exists() and (path / "model").is_dir():
        path = path / "model"
    if not path.is_dir():
        raise CvengineError(f"model not found: {path} (give a run folder, its model/ folder, an ONNX export folder or an MLflow model URI)")
    if not (path / "config.json").exists():
        raise CvengineError(f"{path} holds no config.json: not a model folder (give a run folder, its model/ folder or an ONNX export folder)")
    return path


def _looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "~"))


def _download_hub_model(repo_id: str) -> Path:
    """The local snapshot of a Hugging Face hub model (config, weights, processor)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.txt"]))
    except (RepositoryNotFoundError, LocalEntryNotFoundError, HfHubHTTPError, OSError) as err:
        raise CvengineError(f"model '{repo_id}' is neither a local folder nor a reachable Hugging Face hub model: {str(err).splitlines()[0]}") from None


def _download_mlflow_model(uri: str) -> Path:
    import mlflow
    from mlflow.exceptions import MlflowException

    from mlflow.tracking._tracking_service.utils import is_tracking_uri_set

    from cvengine.engine.tracking import store_for_uris

    # A URI set by the caller (mlflow.set_tracking_uri, MLFLOW_TRACKING_URI) wins over ./runs/mlflow.db.
    store = None if is_tracking_uri_set() else store_for_uris()
    if store:
        mlflow.set_tracking_uri(store)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except MlflowException as err:
        raise CvengineError(f"{uri}: {err.message.splitlines()[0]} (is MLFLOW_TRACKING_URI set to the store that holds it, e.g. sqlite:///runs/mlflow.db?)") from None
    # A pyfunc model logged by cvengine keeps the model folder under artifacts/.
    for candidate in (local, local / "artifacts" / "model", local / "model"):
        if (candidate / "config.json").exists():
            return candidate
    raise CvengineError(f"{uri} is not a model logged by cvengine (no config.json in it or in artifacts/model)")


class OnnxModel:
    """An ONNX Runtime session that answers like the PyTorch model does for inference: keyword
    tensors in, an object with the named outputs (`logits`, `pred_boxes`, …) out."""

    def __init__(self, path: Path, config, providers: Sequence[str] | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise CvengineError("ONNX models need onnxruntime: pip install 'cvengine[onnx]'") from None
        options = ort.SessionOptions()
        self.session = ort.InferenceSession(str(path), options, providers=list(providers or ort.get_available_providers()))
        self.config = config
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        # Adapters inspect forward's parameters (e.g. whether to pass pixel_mask): give them the graph's.
        params = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in self.input_names]
        self.forward = self._run
        self.forward_signature = inspect.Signature(params)

    def _run(self, **inputs):
        feeds = {k: v.detach().cpu().numpy() for k, v in inputs.items() if k in self.input_names}
        outputs = self.session.run(self.output_names, feeds)
        return SimpleNamespace(**{name: torch.from_numpy(value) for name, value in zip(self.output_names, outputs)})

    __call__ = _run

    def eval(self):
        return self


class _SignatureOf:
    """What an adapter's constructor inspects of a model, for an ONNX graph: forward's parameters
    and the config."""

    def __init__(self, onnx_model: OnnxModel):
        def forward(*args, **kwargs):
            return onnx_model(**kwargs)

        forward.__signature__ = onnx_model.forward_signature
        self.forward = forward
        self.config = onnx_model.config


class Predictor:
    """Images in, the task's predictions out (per image, original-image pixels, contiguous labels;
    `label_map` maps them back to the data set's category ids and names)."""

    def __init__(self, model_dir: str | os.PathLike, device: str | None = None, batch_size: int = 8):
        from cvengine.adapters import adapter_class, auto_model_class, load_config
        from cvengine.data.coco import LabelMap
        from cvengine.tasks import get_task

        self.model_dir = Path(model_dir)
        self.config = load_config(str(self.model_dir))
        self.metadata = read_metadata(self.model_dir, self.config)
        self.task = get_task(self.metadata["task"])
        self.label_map = LabelMap.from_metadata(self.metadata)
        self.class_names = self.label_map.names
        self.batch_size = batch_size
        self.is_onnx = (self.model_dir / ONNX_FILE).exists()
        processor = _load_processor(self.model_dir)
        adapter_cls = adapter_class(self.metadata["task"], self.config.model_type, str(self.model_dir))
        if self.is_onnx:
            self.device = torch.device("cpu")
            self.model = OnnxModel(self.model_dir / ONNX_FILE, self.config)
            self.adapter = adapter_cls(_SignatureOf(self.model), processor)
        else:
            self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
            model = auto_model_class(self.metadata["task"], self.config.model_type).from_pretrained(str(self.model_dir))
            self.model = model.to(self.device).eval()
            self.adapter = adapter_cls(self.model, processor)
        # Post-processing that needs more than the weights (panoptic: which classes are stuff).
        self.task.prepare_predictor(self.adapter, self.label_map)

    @classmethod
    def load(cls, model: str | os.PathLike, device: str | None = None, batch_size: int = 8) -> "Predictor":
        return cls(resolve_model_dir(model), device=device, batch_size=batch_size)

    def batch_of(self, images: Sequence[np.ndarray]) -> dict:
        """Images (H, W, 3) uint8 RGB -> the adapter's collated batch (resized as in training)."""
        samples = []
        for i, image in enumerate(images):
            resized, _, _ = self.adapter.resize(image)
            h, w = resized.shape[:2]
            # Empty targets of every task's kind: collate functions build label tensors from them.
            samples.append(
                Sample(
                    image=np.ascontiguousarray(resized), image_id=i, orig_size=tuple(image.shape[:2]),
                    boxes_xyxy_abs=np.zeros((0, 4), np.float32), labels=np.zeros(0, np.int64),
                    masks=np.zeros((0, h, w), np.uint8), semantic_map=np.full((h, w), 255, np.int64), class_label=0,
                )
            )
        return self.adapter.collate(samples)

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) and k not in ("image_ids", "orig_sizes") else v for k, v in batch.items()}

    @torch.inference_mode()
    def forward(self, batch: dict):
        """The model's raw outputs for a collated batch."""
        return self.model(**self.adapter.model_inputs(self._to_device(batch), with_labels=False))

    @torch.inference_mode()
    def predict(self, images: Sequence[np.ndarray]) -> list[dict]:
        """Per image the adapter's prediction dict (`image_id` = position in `images`)."""
        predictions = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            batch = self.batch_of(chunk)
            outputs = self.forward(batch)
            for p in self.adapter.postprocess(outputs, batch):
                p["image_id"] = int(p["image_id"]) + start
                predictions.append(p)
        return predictions

    def predict_stream(self, images: Iterable[tuple[str, np.ndarray]]) -> Iterable[tuple[str, np.ndarray, dict]]:
        """(name, image) pairs in, (name, image, prediction) out, batch by batch."""
        pending: list[tuple[str, np.ndarray]] = []
        for item in images:
            pending.append(item)
            if len(pending) == self.batch_size:
                yield from self._flush(pending)
                pending = []
        if pending:
            yield from self._flush(pending)

    def _flush(self, pending):
        predictions = self.predict([image for _, image in pending])
        for (name, image), prediction in zip(pending, predictions):
            yield name, image, prediction


def _load_processor(model_dir: Path):
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(str(model_dir))
    except (OSError, ValueError) as err:
        raise CvengineError(f"{model_dir}: no image processor (preprocessor_config.json) could be loaded: {str(err).splitlines()[0]}") from None
