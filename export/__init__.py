"""Checkpoint -> ONNX export under the model contract (``models/README.md``), with parity checks."""
