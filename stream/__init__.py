"""dereverb runtime: stream audio through a stateful ONNX dereverberation model (no torch needed)."""

from stream.engine import Dereverberator, copy_state, dereverb_array, engine_step, initial_state, make_plan
from stream.model import ModelError, StepModel

__all__ = ["Dereverberator", "copy_state", "dereverb_array", "engine_step", "initial_state", "make_plan", "ModelError",
           "StepModel"]
__version__ = "0.1.0"
