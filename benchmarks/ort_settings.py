"""Which ONNX Runtime session options make the dereverb step fastest? Measured side by side.

Every variant is a separate ``InferenceSession`` on the same model in the same process; the variants
are timed in interleaved rounds (round-robin, shuffled order each round), so a background load that
comes and goes hits all of them alike. Reported: the median time per call in microseconds and the
ratio to the baseline (the options ``stream/model.py`` uses), at 1 hop per call (streaming) and at
64 hops per call (file mode). Session creation time and peak RSS (fresh subprocess each) are
measured for the options that can change them.

    python -m benchmarks.ort_settings [--model PATH] [--rounds 30] [--calls 200] [--json OUT] [--write]

Prints a Markdown table; ``--write`` puts it into docs/onnxruntime.md between the "measured" markers.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable

from benchmarks import cpu_model
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FILE_HOPS = 64  # hops per call in file mode (stream.engine.MAX_HOPS_PER_CALL)


def _options(**changes) -> Callable:
    """A function that applies the baseline options, then ``changes``, to an ``ort.SessionOptions``."""

    def apply(so, ort) -> None:
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        for key, value in changes.items():
            if key == "config":
                for k, v in value.items():
                    so.add_session_config_entry(k, v)
            elif key == "graph_optimization_level":
                so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, value)
            elif key == "execution_mode":
                so.execution_mode = getattr(ort.ExecutionMode, value)
            else:
                setattr(so, key, value)

    return apply


# name -> session options; "baseline" is what stream/model.py ships.
VARIANTS: dict[str, Callable] = {
    "baseline": _options(),
    "opt DISABLE_ALL": _options(graph_optimization_level="ORT_DISABLE_ALL"),
    "opt BASIC": _options(graph_optimization_level="ORT_ENABLE_BASIC"),
    "opt EXTENDED": _options(graph_optimization_level="ORT_ENABLE_EXTENDED"),
    "intra 2 threads": _options(intra_op_num_threads=2),
    "intra 2, no spinning": _options(intra_op_num_threads=2, config={"session.intra_op.allow_spinning": "0"}),
    "parallel, inter 2": _options(execution_mode="ORT_PARALLEL", inter_op_num_threads=2),
    "cpu arena off": _options(enable_cpu_mem_arena=False),
    "mem pattern off": _options(enable_mem_pattern=False),
    "env arena kSameAsRequested": _options(config={"session.use_env_allocators": "1"}),
    "denormals as zero": _options(config={"session.set_denormal_as_zero": "1"}),
}


def _register_env_allocator(ort) -> None:
    """A process-wide CPU arena that grows by exactly what is requested (for the variant of that name).

    It is process-global (ORT's environment), which is why the runtime would only adopt it if it paid off.
    """
    info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    # max_mem 0 = no limit; arena_extend_strategy 1 = kSameAsRequested; chunk/dead-bytes defaults.
    cfg = ort.OrtArenaCfg(0, 1, -1, -1)
    ort.create_and_register_allocator(info, cfg)


class Step:
    """One way of calling the model once per ``__call__``, carrying its own state."""

    def __init__(self, session, audio: np.ndarray, state: dict[str, np.ndarray]):
        self.session, self.audio, self.state = session, audio, dict(state)
        self.state_names = list(state)
        self.out_names = ["audio_out"] + [f"{n}_out" for n in self.state_names]

    def __call__(self) -> None:
        outs = self.session.run(self.out_names, {"audio": self.audio, **self.state})
        self.state = dict(zip(self.state_names, outs[1:]))


class IoBindingPure(Step):
    """IO binding used the way a pure ``run(audio, state)`` could: bind numpy inputs, let ORT allocate outputs."""

    def __call__(self) -> None:
        b = self.session.io_binding()
        b.bind_cpu_input("audio", self.audio)
        for n, v in self.state.items():
            b.bind_cpu_input(n, v)
        for n in self.out_names:
            b.bind_output(n, "cpu")
        self.session.run_with_iobinding(b)
        outs = b.copy_outputs_to_cpu()
        self.state = dict(zip(self.state_names, outs[1:]))


class IoBindingPrebound(Step):
    """The best case for IO binding: states live in two pre-allocated OrtValue sets that swap every call
    (outputs of call k are the inputs of call k + 1, no copies), the output audio buffer is pre-bound too.
    Not pure (the session owns the state), so it only tells whether the stateful design would pay off."""

    def __init__(self, session, audio, state):
        import onnxruntime as ort

        super().__init__(session, audio, state)
        self.sets = [{n: ort.OrtValue.ortvalue_from_numpy(v.copy()) for n, v in state.items()} for _ in range(2)]
        self.out_audio = ort.OrtValue.ortvalue_from_numpy(np.zeros_like(audio))
        self.bindings = []
        for k in range(2):
            b = session.io_binding()
            for n in self.state_names:
                b.bind_ortvalue_input(n, self.sets[k][n])
                b.bind_ortvalue_output(f"{n}_out", self.sets[1 - k][n])
            b.bind_ortvalue_output("audio_out", self.out_audio)
            self.bindings.append(b)
        self.k = 0
        self.audio_in = ort.OrtValue.ortvalue_from_numpy(audio)
        for b in self.bindings:
            b.bind_ortvalue_input("audio", self.audio_in)

    def __call__(self) -> None:
        self.session.run_with_iobinding(self.bindings[self.k])
        self.k = 1 - self.k


def make_session(model: Path, variant: str):
    import onnxruntime as ort

    so = ort.SessionOptions()
    VARIANTS[variant](so, ort)
    return ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])


def time_interleaved(steps: dict[str, Callable[[], None]], rounds: int, calls: int,
                     seed: int = 0) -> dict[str, np.ndarray]:
    """Per-call wall times in microseconds for every step, measured in shuffled round-robin rounds."""
    rng = random.Random(seed)
    times: dict[str, list[float]] = {k: [] for k in steps}
    names = list(steps)
    for step in steps.values():  # warm-up: first calls allocate
        for _ in range(20):
            step()
    for _ in range(rounds):
        rng.shuffle(names)
        for name in names:
            step, out = steps[name], times[name]
            for _ in range(calls):
                t0 = time.perf_counter_ns()
                step()
                out.append((time.perf_counter_ns() - t0) / 1e3)
    return {k: np.asarray(v) for k, v in times.items()}


_CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import numpy as np
sys.path.insert(0, {repo!r})
from benchmarks.ort_settings import make_session, _register_env_allocator
import onnxruntime as ort
if {variant!r} == "env arena kSameAsRequested":
    _register_env_allocator(ort)
t1 = time.perf_counter()
s = make_session({model!r}, {variant!r})
t2 = time.perf_counter()
state = {{i.name: np.zeros([1 if d == "channels" else d for d in i.shape], np.float32)
         for i in s.get_inputs() if i.name != "audio"}}
names = ["audio_out"] + [n + "_out" for n in state]
for hops in (1, 64, 1, 64):
    for _ in range(20):
        outs = s.run(names, {{"audio": np.zeros((1, hops * {hop}), np.float32), **state}})
        state = dict(zip(state, outs[1:]))
# VmHWM: this process image's peak; ru_maxrss would carry the parent's size over fork + exec.
hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")]
rss = hwm[0] / 1024 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"session_s": t2 - t1, "peak_rss_mb": rss}}))
"""


def child_figures(model: Path, variant: str, hop: int, repeats: int = 3) -> dict[str, float]:
    """Median session-creation time (s) and peak RSS (MiB) over ``repeats`` fresh interpreters."""
    runs = []
    for _ in range(repeats):
        code = _CHILD.format(repo=str(REPO), model=str(model), variant=variant, hop=hop)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             timeout=120)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {k: float(np.median([r[k] for r in runs])) for k in runs[0]}


# What each variant costs besides speed, so a faster one is not adopted blindly.
CAVEATS: dict[str, str] = {
    "intra 2 threads": "uses a second core per stream",
    "intra 2, no spinning": "uses a second core per stream",
    "parallel, inter 2": "uses a second core per stream",
    "env arena kSameAsRequested": "needs a process-wide allocator registered in ORT's environment (a global)",
    "denormals as zero": "changes the floating-point mode of the threads that run the session",
    "io binding, pure (numpy in/out)": "",
    "io binding, pre-bound OrtValues": "the session would own the state: StepModel.run would no longer be pure",
}


def verdict(ratio: float) -> str:
    """A ratio to the baseline in words; differences under 5 % are within the noise of this machine."""
    if ratio < 0.95:
        return f"faster ({(1 - ratio) * 100:.0f} %)"
    if ratio > 1.05:
        return f"slower ({(ratio - 1) * 100:.0f} %)"
    return "same (within 5 %)"


def render(rows: list[dict], meta: dict) -> str:
    """The measured part of docs/onnxruntime.md: a Markdown table and the findings it supports."""
    L = [f"Measured by `python -m benchmarks.ort_settings --rounds {meta['rounds']} --calls {meta['calls']} --write` "
         f"on {meta['date']}: {meta['cpu']}, {meta['cores']} cores, onnxruntime {meta['onnxruntime']}, model "
         f"`{meta['model']}`, hop {meta['hop']} samples ({meta['hop_ms']:.0f} ms). Load average "
         f"{meta['load_before']:.2f} before, {meta['load_after']:.2f} after"
         + (" (quiet machine)." if max(meta['load_before'], meta['load_after']) <= 0.5 else
            " — **busy machine: re-measure on a quiet one before relying on small differences.**"),
         "",
         "Times per call in microseconds; p50 = median, min = best call (robust to background load). "
         "\"vs baseline\" = p50 ratio to the shipped options, measured side by side in interleaved rounds. "
         "Session = session creation time (s), RSS = peak resident memory (MiB) of a fresh interpreter that "
         "loads the model and runs 1- and 64-hop calls (median of 3).",
         "",
         "| variant | 1 hop p50 | 1 hop min | 1 hop p99 | vs baseline | 64 hops p50 | 64 hops min | vs baseline "
         "| session s | RSS MiB | verdict (1 hop) | caveat |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        h64 = (f"{r['hop64_p50_us']:.0f} | {r['hop64_min_us']:.0f} | {r['hop64_ratio']:.2f}"
               if "hop64_p50_us" in r else "- | - | -")
        ex = f"{r['session_s']:.3f} | {r['peak_rss_mb']:.0f}" if "session_s" in r else "- | -"
        L.append(f"| {r['variant']} | {r['hop1_p50_us']:.1f} | {r['hop1_min_us']:.1f} | {r['hop1_p99_us']:.0f} | "
                 f"{r['hop1_ratio']:.2f} | {h64} | {ex} | {verdict(r['hop1_ratio'])} | "
                 f"{CAVEATS.get(r['variant'], '')} |")
    free_wins = [r for r in rows if r["variant"] != "baseline" and not CAVEATS.get(r["variant"])
                 and (r["hop1_ratio"] < 0.95 or r.get("hop64_ratio", 1.0) < 0.95)]
    L.append("")
    if free_wins:
        L.append("**Finding: " + ", ".join(f"'{r['variant']}'" for r in free_wins) + " beat the shipped options "
                 "by more than 5 % with no caveat in this run: re-measure on a quiet machine and, if it holds, "
                 "adopt it in stream/model.py.**")
    else:
        L.append("Finding: no variant without a caveat beats the shipped options by more than 5 % in this run.")
    return "\n".join(L) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="ONNX model (default: the shipped one)")
    ap.add_argument("--rounds", type=int, default=30, help="interleaved rounds (default 30)")
    ap.add_argument("--calls", type=int, default=200, help="calls per variant per round at 1 hop (default 200)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    ap.add_argument("--write", nargs="?", const=REPO / "docs" / "onnxruntime.md", type=Path, default=None,
                    metavar="MD", help="replace the measured section of this Markdown file "
                                       "(default docs/onnxruntime.md)")
    args = ap.parse_args(argv)

    import datetime

    import onnxruntime as ort

    sys.path.insert(0, str(REPO))
    from stream.model import StepModel

    load_before = os.getloadavg()[0]
    model = StepModel.load(args.model)
    path, hop = model.path, model.hop
    _register_env_allocator(ort)
    sessions = {v: make_session(path, v) for v in VARIANTS}
    rng = np.random.default_rng(0)
    x1 = (0.05 * rng.standard_normal((1, hop))).astype(np.float32)
    x64 = (0.05 * rng.standard_normal((1, FILE_HOPS * hop))).astype(np.float32)
    zero = model.initial_state(1)

    print("timing 1 hop per call ...", file=sys.stderr)
    steps1: dict[str, Callable[[], None]] = {v: Step(s, x1, zero) for v, s in sessions.items()}
    steps1["io binding, pure (numpy in/out)"] = IoBindingPure(sessions["baseline"], x1, zero)
    steps1["io binding, pre-bound OrtValues"] = IoBindingPrebound(sessions["baseline"], x1, zero)
    t1 = time_interleaved(steps1, args.rounds, args.calls)
    print(f"timing {FILE_HOPS} hops per call ...", file=sys.stderr)
    steps64 = {v: Step(s, x64, zero) for v, s in sessions.items()}
    t64 = time_interleaved(steps64, args.rounds, max(3, args.calls // 40))
    print("session creation and memory (fresh interpreters) ...", file=sys.stderr)
    extra = {v: child_figures(path, v, hop) for v in
             ["baseline", "opt DISABLE_ALL", "opt BASIC", "opt EXTENDED", "cpu arena off", "mem pattern off",
              "env arena kSameAsRequested"]}

    base1, base64 = np.median(t1["baseline"]), np.median(t64["baseline"])
    rows = []
    for name, t in t1.items():
        p50 = float(np.median(t))
        row = {"variant": name, "hop1_p50_us": p50, "hop1_min_us": float(t.min()),
               "hop1_p99_us": float(np.percentile(t, 99)), "hop1_ratio": p50 / base1}
        if name in t64:
            m64 = float(np.median(t64[name]))
            row.update(hop64_p50_us=m64, hop64_min_us=float(t64[name].min()), hop64_ratio=m64 / base64)
        row.update(extra.get(name, {}))
        rows.append(row)
    meta = {"rounds": args.rounds, "calls": args.calls, "date": datetime.date.today().isoformat(),
            "cpu": cpu_model(), "cores": os.cpu_count(), "onnxruntime": ort.__version__, "model": path.name,
            "hop": hop, "hop_ms": 1000 * hop / model.sample_rate, "load_before": load_before,
            "load_after": os.getloadavg()[0]}
    text = render(rows, meta)
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    if args.write:
        doc = args.write.read_text() if args.write.exists() else f"{BEGIN}\n{END}\n"
        if BEGIN not in doc or END not in doc:
            raise SystemExit(f"{args.write}: no '{BEGIN}' ... '{END}' markers to replace between")
        head, rest = doc.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        args.write.write_text(f"{head}{BEGIN}\n{text}{END}{tail}")
        print(f"wrote {args.write}", file=sys.stderr)
    return 0


BEGIN = "<!-- measured: begin (python -m benchmarks.ort_settings --write) -->"
END = "<!-- measured: end -->"




if __name__ == "__main__":
    sys.exit(main())
