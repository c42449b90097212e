"""The MLflow pyfunc model of a cvengine model, logged in models-from-code style: MLflow stores this
file and runs it when the model is loaded; `set_model` at the bottom names the model object.

Input: a column `image` of base64-encoded image files (JPEG, PNG, …). From Python, raw bytes and
(H, W, 3) uint8 RGB arrays are accepted in the same column. Output: per image the task's answer
(detection: `boxes_xyxy` in pixels of the sent image, `scores`, `labels` (class names),
`category_ids`; instance segmentation adds `masks_rle`; panoptic: `segments_info` and `panoptic_png`).
Parameter `threshold` (default 0) drops predictions scoring below it.

Malformed input raises MlflowException(BAD_REQUEST), which MLflow's scoring server answers with 400.
"""
from __future__ import annotations

import base64
import binascii
import io
import os

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import BAD_REQUEST
from mlflow.pyfunc import PythonModel

IMAGE_COLUMN = "image"
MAX_PIXELS_ENV = "CVENGINE_MAX_PIXELS"
# Larger images are refused before decoding (decompression bombs); 8K UHD is ~33 million pixels.
DEFAULT_MAX_PIXELS = 40_000_000
# Per request: rows, and pixels of all its images together (every row is decoded before inference).
MAX_ROWS_ENV = "CVENGINE_MAX_ROWS"
DEFAULT_MAX_ROWS = 64
MAX_REQUEST_PIXELS_ENV = "CVENGINE_MAX_REQUEST_PIXELS"
DEFAULT_MAX_REQUEST_PIXELS = 100_000_000


_LINE_BREAKS = str.maketrans("", "", "\r\n")


def bad_request(message: str) -> MlflowException:
    return MlflowException(message, error_code=BAD_REQUEST)


def max_pixels() -> int:
    return int(os.environ.get(MAX_PIXELS_ENV, DEFAULT_MAX_PIXELS))


# A request over a limit: MLflow answers it 400 (other error codes get the input echoed in the
# message); the server's LimitedApp answers messages with this prefix 413.
TOO_LARGE_PREFIX = "request too large: "


def too_large(message: str) -> MlflowException:
    return MlflowException(TOO_LARGE_PREFIX + message, error_code=BAD_REQUEST)


def header_pixels(value) -> int:
    """Pixels of one cell from its header or shape, decoding nothing (0 when unreadable: the decode
    then answers 400 with the reason)."""
    from PIL import Image

    if isinstance(value, np.ndarray):
        return int(value.shape[0] * value.shape[1]) if value.ndim >= 2 else 0
    try:
        raw = base64.b64decode(value, validate=True) if isinstance(value, str) else value
        with Image.open(io.BytesIO(raw)) as image:
            return image.size[0] * image.size[1]
    except Exception:
        return 0


def check_request_size(cells: list) -> None:
    rows = int(os.environ.get(MAX_ROWS_ENV, DEFAULT_MAX_ROWS))
    if len(cells) > rows:
        raise too_large(f"{len(cells)} rows in one request is above the limit of {rows}; send them in several requests")
    limit = int(os.environ.get(MAX_REQUEST_PIXELS_ENV, DEFAULT_MAX_REQUEST_PIXELS))
    total = sum(header_pixels(cell) for cell in cells)
    if total > limit:
        raise too_large(f"the request's images hold {total} pixels together, above the limit of {limit}; send fewer or smaller images per request")


def decode_image(value, row: int, limit: int) -> np.ndarray:
    """One cell of the image column -> (H, W, 3) uint8 RGB."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    from cvengine.data.images import to_rgb

    if isinstance(value, np.ndarray):
        if value.dtype != np.uint8 or value.ndim != 3 or value.shape[2] != 3:
            raise bad_request(f"row {row}: an image array must be (H, W, 3) uint8 RGB; got {value.shape} {value.dtype}")
        if value.shape[0] * value.shape[1] > limit:
            raise bad_request(f"row {row}: {value.shape[1]}x{value.shape[0]} pixels is above the limit of {limit} pixels")
        return value
    if isinstance(value, str):
        try:
            # MIME base64 breaks lines every 76 characters (Spark's base64() does): line breaks are not data.
            value = base64.b64decode(value.translate(_LINE_BREAKS), validate=True)
        except (binascii.Error, ValueError):
            raise bad_request(f"row {row}: the '{IMAGE_COLUMN}' value is not valid base64") from None
    if not isinstance(value, (bytes, bytearray)):
        raise bad_request(f"row {row}: the '{IMAGE_COLUMN}' value must be a base64 string (bytes or an array from Python); got {type(value).__name__}")
    try:
        with Image.open(io.BytesIO(value)) as image:
            # The header gives the size: refuse before any pixel is decoded.
            width, height = image.size
            if width * height > limit:
                raise bad_request(f"row {row}: {width}x{height} pixels is above the limit of {limit} pixels")
            image = ImageOps.exif_transpose(image)
            return np.asarray(to_rgb(image))
    except MlflowException:
        raise
    except Image.DecompressionBombError:
        raise bad_request(f"row {row}: the image is too large to decode safely") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise bad_request(f"row {row}: not a readable image ({type(err).__name__}: {str(err)[:200]})") from None


def image_column(model_input) -> list:
    """The image cells of a DataFrame, a dict of columns, a list of cells or a single array."""
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        if IMAGE_COLUMN not in model_input.columns:
            raise bad_request(f"the input needs a column '{IMAGE_COLUMN}' of base64-encoded images; got columns {list(model_input.columns)}")
        return list(model_input[IMAGE_COLUMN])
    if isinstance(model_input, dict):
        if IMAGE_COLUMN not in model_input:
            raise bad_request(f"the input needs a key '{IMAGE_COLUMN}' of base64-encoded images; got keys {list(model_input)}")
        cells = model_input[IMAGE_COLUMN]
        return list(cells) if isinstance(cells, (list, tuple)) else [cells]
    if isinstance(model_input, np.ndarray) and model_input.ndim == 3:
        return [model_input]
    if isinstance(model_input, (list, tuple)):
        return list(model_input)
    raise bad_request(f"unsupported input of type {type(model_input).__name__}: send a column '{IMAGE_COLUMN}' of base64-encoded images")


class CvengineModel(PythonModel):
    def load_context(self, context):
        from cvengine.serving.predictor import Predictor

        self.predictor = Predictor(context.artifacts["model"])

    def predict(self, context, model_input, params=None):
        threshold = float((params or {}).get("threshold", 0.0) or 0.0)
        limit = max_pixels()
        cells = image_column(model_input)
        if not cells:
            return []
        check_request_size(cells)
        images = [decode_image(cell, row, limit) for row, cell in enumerate(cells)]
        predictor = self.predictor
        task = predictor.task
        return [
            task.serving_output(task.filter_prediction(p, threshold), predictor.label_map)
            for p in predictor.predict(images)
        ]


mlflow.models.set_model(CvengineModel())
