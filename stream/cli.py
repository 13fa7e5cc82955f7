"""dereverb: remove room reverberation from audio, live or from files, with a streaming ONNX model.

Subcommands:
  file     dereverberate files or folders (time-aligned, same format, written atomically)
  demo     dereverberate the bundled reverberant clip and report latency and speed
  info     show the model card (rate, hop, latency, states, training, metrics)
  live     dereverberate a live input (microphone) to an output (speakers) in real time
  devices  list audio devices (index, name, host API, channels, default rate) for live -i/-o
  bench    measure latency, per-block processing time, file-mode speed, load time and memory

Run 'dereverb SUBCOMMAND -h' for the options of each.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class CliError(Exception):
    """A user-facing error: printed as one line, exit code attached."""

    def __init__(self, message: str, code: int = EXIT_FAILED):
        super().__init__(message)
        self.code = code


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """The model options every subcommand shares."""
    g = parser.add_argument_group("model")
    g.add_argument("--model", type=Path, default=None, metavar="PATH",
                   help="ONNX model following the dereverb contract (default: the shipped model)")
    g.add_argument("--threads", type=positive_int, default=1, metavar="T",
                   help="ONNX Runtime threads (default: 1, the fastest for streaming)")


def load_model(args: argparse.Namespace):
    from stream.model import ModelError, SessionOptions, StepModel

    try:
        return StepModel.load(args.model, SessionOptions(threads=args.threads))
    except ModelError as exc:
        raise CliError(str(exc)) from None


def number(cast: type, low: float | None = None, high: float | None = None, low_open: bool = False,
           unit: str = ""):
    """An argparse type: ``cast(text)`` within [low, high] (``low_open``: strictly above low).

    NaN and infinities are refused: they pass no range check by comparison and would fail only later,
    per file or mid-stream, instead of as a usage error before anything is touched."""
    kind = "an integer" if cast is int else "a number"

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {kind}: {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if low is not None and (value <= low if low_open else value < low):
            raise argparse.ArgumentTypeError(f"must be {'>' if low_open else '>='} {low}{unit}, got {value}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be within {low}..{high}{unit}, got {value}")
        return value

    return parse


mix_value = number(float, 0.0, 1.0)
positive_int = number(int, 1)
nonnegative_int = number(int, 0)
positive_float = number(float, 0.0, low_open=True)
positive_seconds = number(float, 0.0, low_open=True, unit=" seconds")
# The engine's rate range (stream.engine.Dereverberator) and file mode's channel limit.
sample_rate = number(int, 8000, 384000, unit=" Hz")
channel_count = number(int, 1, 64)
bench_seconds = number(float, 0.0, 600.0, low_open=True, unit=" seconds")  # the signal is held in memory
buffer_ms = number(float, 0.0, 1000.0, unit=" ms")  # more than a second of buffering is not live


# ---------------------------------------------------------------------------------------------- file
def _add_file(sub) -> None:
    p = sub.add_parser("file", help="dereverberate files or folders",
                       description="Dereverberate audio files; a folder input is scanned recursively.")
    p.add_argument("inputs", nargs="+", type=Path, metavar="IN", help="audio files or folders")
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("-o", "--output", type=Path, metavar="OUT", help="output file (one input file only)")
    out.add_argument("--out-dir", type=Path, metavar="DIR", help="output folder (folder layout is kept)")
    p.add_argument("--mix", type=mix_value, default=1.0, metavar="M",
                   help="wet/dry: 1 = fully dereverberated (default), 0 = original")
    p.add_argument("--block-size", type=positive_int, default=None, metavar="N",
                   help="frames per streamed block (default 65536; output is the same for any size)")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    add_model_options(p)
    p.set_defaults(run=_run_file)


def _run_file(args: argparse.Namespace) -> int:
    from stream.filemode import DEFAULT_BLOCK, plan_jobs, run_jobs

    if args.output is not None and (len(args.inputs) != 1 or args.inputs[0].is_dir()):
        raise CliError("-o/--output takes exactly one input file; use --out-dir for several files or a folder",
                       EXIT_USAGE)
    jobs, errors = plan_jobs(args.inputs, args.output, args.out_dir)
    for e in errors:
        print(f"dereverb: error: {e}", file=sys.stderr)
    if not jobs:
        return EXIT_FAILED
    model = load_model(args)
    show = sys.stderr.isatty() and not args.quiet
    results, failures = run_jobs(jobs, model, args.mix, args.block_size or DEFAULT_BLOCK, args.force, show)
    if not args.quiet:
        for r in results:
            print(f"{r.src} -> {r.dst}  ({describe_speed(r.frames, r.seconds, r.elapsed)})")
    return EXIT_FAILED if failures or errors else EXIT_OK


def describe_speed(frames: int, seconds: float, elapsed: float) -> str:
    """'12.3 s audio, 140x real time'; short files in ms and speeds below 10x with two significant digits,
    so no figure rounds to a misleading 0 (a 1-frame file takes far longer than its 62.5 us to process)."""
    length = f"{seconds:.1f} s" if seconds >= 1 else f"{frames} frame{'s' * (frames != 1)}, {1000 * seconds:.3g} ms"
    if elapsed <= 0:
        return f"{length} audio"
    speed = seconds / elapsed
    return f"{length} audio, {speed:.0f}x real time" if speed >= 10 else f"{length} audio, {speed:.2g}x real time"


# ---------------------------------------------------------------------------------------------- demo
def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="dereverberate the bundled demo clip",
                       description="Dereverberate the bundled reverberant clip, write input and output, "
                                   "report latency and speed, optionally play the result.")
    p.add_argument("--out-dir", type=Path, default=Path("dereverb-demo"), metavar="DIR",
                   help="where to write demo_input.wav and demo_dereverbed.wav (default: ./dereverb-demo)")
    p.add_argument("--play", action="store_true", help="play input then output on the default output device")
    add_model_options(p)
    p.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from stream.demo import run_demo

    return run_demo(load_model(args), args.out_dir, play=args.play)


# ---------------------------------------------------------------------------------------------- info
def _add_info(sub) -> None:
    p = sub.add_parser("info", help="show the model card", description="Show the model card.")
    p.add_argument("--json", action="store_true", help="print the whole card as JSON")
    add_model_options(p)
    p.set_defaults(run=_run_info)


def _run_info(args: argparse.Namespace) -> int:
    m = load_model(args)
    if args.json:
        print(json.dumps(m.card, indent=2))
        return EXIT_OK
    c = m.card
    lat = m.step_latency + m.hop - 1
    rows = [
        ("model", str(m.path)),
        ("name", f"{c.get('name')} {c.get('version', '')}".strip()),
        ("architecture", str(c.get("architecture", "?"))),
        ("rate / hop", f"{m.sample_rate} Hz / {m.hop} samples ({1000 * m.hop / m.sample_rate:.1f} ms)"),
        ("latency", f"{lat} samples ({1000 * lat / m.sample_rate:.2f} ms) at the model's rate"),
        ("parameters", f"{c['parameters']:,}" if isinstance(c.get("parameters"), int) else "?"),
    ]
    rows += [("state", f"{s.name} {format_shape(s.shape)}") for s in m.states]
    rows += [("training", line) for line in training_lines(c)] or [("training", "not in the card")]
    rows += [("metrics", line) for line in metrics_lines(c)] or [("metrics", "not in the card")]
    rows += [("known limit", line) for line in c.get("known_limits", [])]
    print("\n".join(f"{k:<12} {v}" for k, v in rows))
    return EXIT_OK


def format_shape(shape) -> str:
    """A state shape as the card writes it: ``[channels, 256]`` (the channel axis is ``None`` in a StateSpec)."""
    return "[" + ", ".join("channels" if d is None else str(d) for d in shape) + "]"


def training_lines(card: dict) -> list[str]:
    """What the model was trained on and for how long, from the card's ``training`` section."""
    t = card.get("training")
    if not isinstance(t, dict):
        return []
    lines = []
    data = t.get("data", {})
    hours = data.get("corpus_hours", {})
    if hours:
        speech, music = hours.get("train_speech", 0.0), hours.get("train_music", 0.0)
        voices = data.get("voices", {}).get("train", [])
        lines.append(f"{speech:.1f} h of speech ({len(voices)} TTS voices) and {music:.1f} h of music")
    rooms = data.get("rooms", {})
    if rooms.get("count"):
        rt60 = rooms.get("rt60_s", [])
        span = f", RT60 {rt60[0]:.2f}-{rt60[1]:.2f} s" if len(rt60) == 2 else ""
        lines.append(f"{rooms['count'].get('train', '?')} simulated rooms{span}")
    stages = [st for st in t.get("stages", []) if isinstance(st, dict) and "epochs" in st] or (
        [{"epochs": t["epochs"], "train_seconds": t.get("train_seconds")}] if "epochs" in t else [])
    for i, st in enumerate(stages, 1):
        # A run records the epochs and time up to the epoch it kept (its best validation), which may
        # be fewer than the run's budget.
        took = f", {st['train_seconds'] / 60:.0f} min to it" if isinstance(st.get("train_seconds"), (int, float)) else ""
        lines.append((f"run {i}: " if len(stages) > 1 else "") + f"kept after epoch {st['epochs']}{took}")
    return lines


# The card's metric groups, in the order a reader wants them, and the columns shown for each.
METRIC_GROUPS = [("rt60<0.4", "RT60 < 0.4 s"), ("rt60 0.4-0.8", "RT60 0.4-0.8 s"), ("rt60>0.8", "RT60 > 0.8 s"),
                 ("dry", "dry speech"), ("music", "music")]
METRIC_COLUMNS = [("d_si_sdr_direct", "dSI-SDR direct", "{:+.3f} dB"), ("d_si_sdr_early", "dSI-SDR early-50",
                  "{:+.3f} dB"), ("d_pesq", "dPESQ-WB", "{:+.2f}"), ("d_estoi", "dESTOI", "{:+.3f}"),
                  ("d_dnsmos_ovrl", "dDNSMOS OVRL", "{:+.2f}")]


def metrics_lines(card: dict) -> list[str]:
    """The held-out test results of the card's ``metrics`` section as a small table (gains over the input)."""
    metrics = card.get("metrics")
    summary = metrics.get("summary") if isinstance(metrics, dict) else None
    if not isinstance(summary, dict):
        return []
    rows = [(label, summary[key]["ours"]) for key, label in METRIC_GROUPS if "ours" in summary.get(key, {})]
    if not rows:
        return []
    counts = metrics.get("test_set", {}).get("counts", {})
    source = metrics.get("source")
    head = f"held-out test set, {sum(counts.values())} examples" if counts else "held-out test set"
    lines = [head + (f" ({source})" if source else "")]
    width = max(len(label) for label, _ in rows)
    lines.append(" " * width + "".join(f"  {title}" for _, title, _ in METRIC_COLUMNS))
    for label, ours in rows:
        cells = "".join(f"  {fmt.format(ours[key]) if key in ours else '-':>{len(title)}}"
                        for key, title, fmt in METRIC_COLUMNS)
        lines.append(f"{label:<{width}}{cells}")
    return lines


# --------------------------------------------------------------------------------------------- bench
def block_sizes(text: str) -> tuple[int, ...]:
    """argparse type for --block-sizes: comma-separated frame counts, each >= 1."""
    sizes = tuple(positive_int(t) for t in text.split(",") if t.strip())
    if not sizes:
        raise argparse.ArgumentTypeError(f"no block sizes in {text!r}")
    return sizes


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="measure latency, speed, load time and memory",
                       description="Measure the algorithmic latency, the processing time per block "
                                   "(p50/p99/max) and real-time factor for each block size through the "
                                   "streaming engine, the file-mode throughput, the import + model load time "
                                   "and the peak memory. Run it on an otherwise idle machine.")
    p.add_argument("--block-sizes", type=block_sizes, default=(32, 64, 128, 256, 512, 1024), metavar="N,N,..",
                   help="frames per block at the stream's rate (default: 32,64,128,256,512,1024)")
    p.add_argument("--samplerate", type=sample_rate, default=None, metavar="SR",
                   help="stream sample rate in Hz, 8000..384000 (default: the model's; others are resampled "
                        "inside)")
    p.add_argument("--channels", type=channel_count, default=1, metavar="C", help="channels, 1..64 (default: 1)")
    p.add_argument("--seconds", type=bench_seconds, default=10.0, metavar="S",
                   help="seconds of audio streamed per block size, up to 600 (default: 10)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    add_model_options(p)
    p.set_defaults(run=_run_bench)


def _run_bench(args: argparse.Namespace) -> int:
    from stream.bench import busy_warning, run_bench

    warning = busy_warning(os.getloadavg()[0], os.cpu_count() or 1)
    if warning:
        print(f"dereverb: warning: {warning}", file=sys.stderr)
    model = load_model(args)
    log = None if args.json else (lambda s: print(f"  measuring {s} ...", file=sys.stderr))
    try:
        report = run_bench(model, threads=args.threads, block_sizes=args.block_sizes, sample_rate=args.samplerate,
                           channels=args.channels, seconds=args.seconds, log=log)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    print(json.dumps(report.to_json(), indent=2) if args.json else report.format_table())
    return EXIT_OK


# ---------------------------------------------------------------------------------------------- live
def latency_value(text: str) -> str | float:
    """argparse type for --latency: 'low', 'high' or seconds > 0."""
    if text in ("low", "high"):
        return text
    return positive_seconds(text)


def _add_live(sub) -> None:
    from stream.devices import parse_device

    p = sub.add_parser("live", help="live input -> dereverb -> output, in real time",
                       description="Dereverberate a live input (microphone) to an output (speakers). Devices "
                                   "open at their own rate; the engine resamples inside. On a terminal, keys: "
                                   "b = bypass on/off, + / - = mix up/down, q = quit (Ctrl-C works too).")
    p.add_argument("-i", "--input-device", type=parse_device, default=None, metavar="DEV",
                   help="input device: index or name substring (default: the system default)")
    p.add_argument("-o", "--output-device", type=parse_device, default=None, metavar="DEV",
                   help="output device: index or name substring (default: the system default)")
    p.add_argument("--samplerate", type=sample_rate, default=None, metavar="SR",
                   help="stream rate in Hz, 8000..384000 (default: the input device's own rate)")
    p.add_argument("--blocksize", type=nonnegative_int, default=0, metavar="N",
                   help="frames per callback (default 0: the host's choice, e.g. the JACK period)")
    p.add_argument("--channels", type=channel_count, default=None, metavar="C",
                   help="channels to process (default: min(2, input channels, output channels); "
                        "mono is copied to both outputs)")
    p.add_argument("--latency", type=latency_value, default="low", metavar="low|high|SECONDS",
                   help="device latency PortAudio aims for (default: low; use high if it crackles)")
    p.add_argument("--mix", type=mix_value, default=1.0, metavar="M",
                   help="wet/dry: 1 = fully dereverberated (default), 0 = original")
    p.add_argument("--bypass", action="store_true", help="start bypassed (press b to switch the effect on)")
    p.add_argument("--duration", type=positive_float, default=None, metavar="S",
                   help="stop after S seconds (default: run until q or Ctrl-C)")
    p.add_argument("--stats", type=Path, default=None, metavar="PATH", help="write the summary as JSON")
    p.add_argument("--buffer-ms", type=buffer_ms, default=20.0, metavar="MS",
                   help="run the model on a worker thread behind MS ms of buffering (default 20: rides out "
                        "CPU spikes, see docs/live.md; at most 1000); 0 = inside the audio callback, 20 ms less latency "
                        "but more xruns on a busy machine")
    p.add_argument("--passthrough", action="store_true",
                   help="copy input to output without the model: a baseline for latency and xruns")
    p.add_argument("--list-devices", action="store_true", help="list audio devices and exit")
    add_model_options(p)
    p.set_defaults(run=_run_live)


def _add_devices(sub) -> None:
    p = sub.add_parser("devices", help="list audio devices for live mode",
                       description="List audio devices: index, name, host API, input and output channels, "
                                   "default rate. Use the index or a name substring with live -i/-o.")
    p.set_defaults(run=_run_devices)


def _sounddevice():
    from stream.devices import AudioDeviceError, import_sounddevice

    try:
        return import_sounddevice()
    except AudioDeviceError as exc:
        raise CliError(str(exc)) from None


def _run_devices(args: argparse.Namespace) -> int:
    from stream.devices import format_devices, query_devices

    devices, default_in, default_out = query_devices(_sounddevice())
    if not devices:
        raise CliError("no audio devices found (no sound card, or the audio server is not running)")
    print(format_devices(devices, default_in, default_out))
    return EXIT_OK


def _run_live(args: argparse.Namespace) -> int:

    from stream.devices import AudioDeviceError
    from stream.live import LiveConfig, prepare, run_live
    from stream.live_report import format_summary, write_stats

    if args.list_devices:
        return _run_devices(args)
    sd = _sounddevice()
    config = LiveConfig(input_device=args.input_device, output_device=args.output_device,
                        samplerate=args.samplerate, blocksize=args.blocksize, channels=args.channels,
                        latency=args.latency, mix=args.mix, bypass=args.bypass, duration=args.duration,
                        stats=args.stats, passthrough=args.passthrough, buffer_ms=args.buffer_ms)
    try:
        setup = prepare(sd, config)  # device problems surface before the model loads
        model = None if args.passthrough else load_model(args)
        result = run_live(sd, config, model, setup)
    except AudioDeviceError as exc:
        raise CliError(str(exc)) from None
    if args.stats is not None:
        write_stats(args.stats, result.summary)
    print(format_summary(result.summary), flush=True)
    if result.device_lost:
        print("dereverb: error: the audio device stopped mid-stream (unplugged, or the audio server quit)",
              file=sys.stderr, flush=True)
        # PortAudio can hang for good in stop/close/terminate once its device is gone (seen with JACK), and
        # sounddevice terminates PortAudio at exit: leave without running those handlers.
        os._exit(EXIT_FAILED)
    return EXIT_OK


SUBCOMMANDS: list[Callable] = [_add_file, _add_demo, _add_info, _add_bench, _add_live, _add_devices]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dereverb", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    from stream import __version__

    parser.add_argument("--version", action="version", version=f"dereverb {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


class Terminated(Exception):
    """SIGTERM, raised in the main thread so cleanup (temporary files, streams) runs as for Ctrl-C."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    import signal

    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit:  # --help, --version and usage errors print, then exit: flush inside the guard
            sys.stdout.flush()
            raise
        code = args.run(args)
        sys.stdout.flush()  # a closed pipe shows on the last flush: raise it here, not at interpreter exit
        return code
    except CliError as exc:
        print(f"dereverb: error: {exc}", file=sys.stderr)
        return exc.code
    except BrokenPipeError:
        return _stdout_closed()
    except KeyboardInterrupt:
        print("dereverb: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("dereverb: terminated", file=sys.stderr)
        return 143
    finally:
        signal.signal(signal.SIGTERM, previous)


EXIT_PIPE = 128 + 13  # what a shell reports for a Unix tool that SIGPIPE ended: the reader went away


def _stdout_closed() -> int:
    """The reader of stdout went away (``dereverb info --json | head -1``): stop quietly, as Unix tools do.

    Whatever Python still holds for stdout goes to /dev/null, so the flush at exit cannot raise again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_PIPE


if __name__ == "__main__":
    sys.exit(main())
