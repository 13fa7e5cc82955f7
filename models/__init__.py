"""Shipped dereverberation models: ``<name>.onnx`` plus its ``<name>.json`` card (see README.md)."""

from pathlib import Path

# The model the runtime uses when none is given. Changing the default is a one-line, reviewed change.
DEFAULT_MODEL = "dereverb-lstm-16k"


def default_model_path() -> Path:
    return Path(__file__).resolve().parent / f"{DEFAULT_MODEL}.onnx"
