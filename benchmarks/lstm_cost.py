"""Where a streaming step's time goes on this CPU: the LSTM's weight traffic, and what int8 would buy.

    python -m benchmarks.lstm_cost [--model PATH] [--rounds 15] [--calls 100]

Part 1 times a bare two-layer ``nn.LSTM`` (input 256, the shipped model's projection width) exported
to ONNX, for several widths, at one hop per call (streaming) and with 8 channels in one call. If the
time grows with the bytes of the weights (4 gates x H x (I + H) floats per layer, read once per
step), and 8 channels cost little more than one, the step is bound by memory bandwidth, not by
arithmetic: every 16 ms hop streams the whole weight set from the cache.

Part 2 quantizes the shipped model's LSTM and its two dense layers to int8 with onnxruntime's
``quantize_dynamic`` (the DFT matrices and the music head stay float) and measures, side by side in one
run: time per 1-hop call, the output's SNR against the float model, and the SNR of whole-signal
against hop-by-hop processing. Dynamic quantization derives activation scales from each call's
input, so the last figure is the question: does the output still not depend on how the audio is
split into calls (the engine's block-size invariance, ``tests/stream/test_engine.py``)?

Timings are medians over interleaved rounds (every variant once per round), one thread each. Needs
torch (part 1 exports with it) and onnxruntime.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import cpu_model

WIDTHS = (128, 192, 256, 320, 384)
INPUT = 256  # the shipped model's projection width: the first LSTM layer's input


def _median_us(sessions: dict, feeds: dict, rounds: int, calls: int) -> dict:
    """Median microseconds per ``run`` for each session in ``sessions``, in interleaved rounds."""
    times: dict = {k: [] for k in sessions}
    for _ in range(rounds):
        for k, s in sessions.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                s.run(None, feeds[k])
            times[k].append((time.perf_counter() - t0) / calls * 1e6)
    return {k: float(np.median(v)) for k, v in times.items()}


def lstm_scaling(rounds: int, calls: int) -> list[dict]:
    """Part 1: per-call time of a bare 2-layer LSTM step against its weight bytes."""
    import onnxruntime as ort
    import torch

    from stream.model import ort_session_options

    class Step(torch.nn.Module):
        def __init__(self, hidden: int) -> None:
            super().__init__()
            self.lstm = torch.nn.LSTM(INPUT, hidden, 2, batch_first=True)

        def forward(self, x, h, c):
            y, (h2, c2) = self.lstm(x, (h, c))
            return y, h2, c2

    sessions, feeds = {}, {}
    for hidden in WIDTHS:
        buf = io.BytesIO()
        args = (torch.zeros(1, 1, INPUT), torch.zeros(2, 1, hidden), torch.zeros(2, 1, hidden))
        torch.onnx.export(Step(hidden).eval(), args, buf, input_names=["x", "h", "c"], output_names=["y", "h2", "c2"],
                          opset_version=17, dynamo=False,
                          dynamic_axes={"x": {0: "b"}, "h": {1: "b"}, "c": {1: "b"}})
        session = ort.InferenceSession(buf.getvalue(), ort_session_options(), providers=["CPUExecutionProvider"])
        for batch in (1, 8):
            rng = np.random.default_rng(hidden)
            sessions[(hidden, batch)] = session
            feeds[(hidden, batch)] = {"x": rng.standard_normal((batch, 1, INPUT)).astype(np.float32),
                                      "h": np.zeros((2, batch, hidden), np.float32),
                                      "c": np.zeros((2, batch, hidden), np.float32)}
    us = _median_us(sessions, feeds, rounds, calls)
    rows = []
    for hidden in WIDTHS:
        weights_mb = 4 * 4 * hidden * ((INPUT + hidden) + (hidden + hidden)) / 1e6  # float32, both layers
        one, eight = us[(hidden, 1)], us[(hidden, 8)]
        rows.append({"hidden": hidden, "weights_mb": weights_mb, "us_1ch": one, "us_8ch": eight,
                     "gb_per_s": weights_mb * 1e3 / one})
    return rows


def _snr_db(x: np.ndarray, ref: np.ndarray) -> float:
    err = float(np.sum((x - ref) ** 2))
    return float("inf") if err == 0.0 else 10.0 * np.log10(float(np.sum(ref**2)) / err)


def int8_study(model_path: Path, rounds: int, calls: int) -> dict:
    """Part 2: the shipped model with its LSTM and dense layers in int8 (dynamic quantization)."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from stream.model import StepModel, ort_session_options
    from tests.signals import speechlike

    graph = onnx.load(str(model_path)).graph
    layers = [n.name for n in graph.node if n.op_type == "LSTM"
              or (n.op_type == "MatMul" and any(part in n.name for part in ("/proj/", "/mask/")))]
    with tempfile.TemporaryDirectory() as tmp:
        q_path = Path(tmp) / "int8.onnx"
        quantize_dynamic(str(model_path), str(q_path), weight_type=QuantType.QInt8, nodes_to_quantize=layers)
        q_path.with_suffix(".json").write_text(model_path.with_suffix(".json").read_text())
        models = {"float": StepModel.load(model_path), "int8": StepModel.load(q_path)}
        sizes = {"float": model_path.stat().st_size / 1e6, "int8": q_path.stat().st_size / 1e6}
        sessions = {k: ort.InferenceSession(str(m.path), ort_session_options(), providers=["CPUExecutionProvider"])
                    for k, m in models.items()}
        hop = models["float"].hop
        one_hop = (np.random.default_rng(0).standard_normal((1, hop)) * 0.05).astype(np.float32)
        feeds = {k: {"audio": one_hop, **m.initial_state(1)} for k, m in models.items()}
        us = _median_us(sessions, feeds, rounds, calls)
        x = speechlike(4.0, models["float"].sample_rate, 1, seed=3)[:, 0]
        x = x[None, : x.shape[0] // hop * hop].astype(np.float32)
        out = {}
        for k, m in models.items():
            whole, _ = m.run(x, m.initial_state(1))
            state, parts = m.initial_state(1), []
            for i in range(0, x.shape[1], hop):
                y, state = m.run(np.ascontiguousarray(x[:, i : i + hop]), state)
                parts.append(y)
            out[k] = (whole, np.concatenate(parts, axis=1))
    return {k: {"us_per_hop": us[k], "mb": sizes[k], "snr_vs_float_db": _snr_db(out[k][0], out["float"][0]),
                "whole_vs_hop_by_hop_snr_db": _snr_db(out[k][1], out[k][0])} for k in models}


def main(argv: list[str] | None = None) -> int:
    from stream.model import default_model_path

    ap = argparse.ArgumentParser(prog="python -m benchmarks.lstm_cost", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="ONNX step model (default: the shipped one)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calls", type=int, default=100, help="calls per variant per round")
    args = ap.parse_args(argv)
    print(f"{cpu_model()}; medians of {args.rounds} interleaved rounds of {args.calls} calls, one thread\n")
    print(f"Two-layer LSTM step, input {INPUT}, float32:\n")
    print("| hidden | weights MB | us per step, 1 channel | 8 channels in one call | weights read per second |")
    print("|---|---|---|---|---|")
    for r in lstm_scaling(args.rounds, args.calls):
        print(f"| {r['hidden']} | {r['weights_mb']:.2f} | {r['us_1ch']:.1f} | {r['us_8ch']:.1f} "
              f"({r['us_8ch'] / r['us_1ch']:.2f}x) | {r['gb_per_s']:.1f} GB/s |")
    study = int8_study(args.model or default_model_path(), args.rounds, args.calls)
    print("\nThe shipped model, float against int8 (LSTM, projection and mask layers; dynamic quantization):\n")
    print("| weights | file MB | us per 1-hop call | SNR vs float | whole vs hop-by-hop SNR |")
    print("|---|---|---|---|---|")
    for k, r in study.items():
        print(f"| {k} | {r['mb']:.2f} | {r['us_per_hop']:.1f} | {r['snr_vs_float_db']:.1f} dB "
              f"| {r['whole_vs_hop_by_hop_snr_db']:.1f} dB |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
