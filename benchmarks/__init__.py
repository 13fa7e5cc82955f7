"""Speed benchmarks of the dereverb runtime (outside the default test run; see docs/benchmarks.md).

- ``benchmarks/test_*.py``: pytest-benchmark suite (``python -m pytest benchmarks``).
- ``python -m benchmarks.peers``: side-by-side timing against nara-wpe, DeepFilterNet3 and RNNoise,
  writes ``docs/benchmarks.md`` and ``docs/benchmarks_blocks.png``.
- ``python -m benchmarks.ort_settings``: the ONNX Runtime session-option study behind
  ``stream/model.py``'s choices (``docs/onnxruntime.md``).
- ``python -m benchmarks.lstm_cost``: what a step costs on this CPU (the LSTM's weight traffic) and
  what int8 weights would buy (``docs/onnxruntime.md``, last section).
- ``python -m benchmarks.live_measure``: ``dereverb live`` through a JACK server it starts itself:
  added latency, load and xruns against pass-through (``docs/live.md``); its JACK server, probe and
  analysis also drive the live-mode tests.
"""


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what the platform module knows."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()
