"""Inference on trained models: the Predictor (PyTorch or ONNX Runtime), the MLflow pyfunc model and
registry, the HTTP server and the ONNX export."""
