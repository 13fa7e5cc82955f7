"""Speed benchmarks of the dereverb runtime (outside the default test run; see docs/benchmarks.md).

- ``benchmarks/test_*.py``: pytest-benchmark suite (``python -m pytest benchmarks``).
- ``python -m benchmarks.peers``: side-by-side timing against nara-wpe, DeepFilterNet3 and RNNoise,
  writes ``docs/benchmarks.md`` and ``docs/benchmarks_blocks.png``.
- ``python -m benchmarks.ort_settings``: the ONNX Runtime session-option study behind
  ``stream/model.py``'s choices (``docs/onnxruntime.md``).
"""
