"""dereverb: remove room reverberation from audio, live or from files, with a streaming ONNX model.

Subcommands:
  file     dereverberate files or folders (time-aligned, same format, written atomically)
  demo     dereverberate the bundled reverberant clip and report latency and speed
  info     show the model card (rate, hop, latency, states, training, metrics)

Run 'dereverb SUBCOMMAND -h' for the options of each.
"""

from __future__ import annotations

import argparse
import json
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
    g.add_argument("--threads", type=int, default=1, metavar="T",
                   help="ONNX Runtime threads (default: 1, the fastest for streaming)")


def load_model(args: argparse.Namespace):
    from stream.model import ModelError, SessionOptions, StepModel

    try:
        return StepModel.load(args.model, SessionOptions(threads=args.threads))
    except ModelError as exc:
        raise CliError(str(exc)) from None


def mix_value(text: str) -> float:
    """argparse type for --mix: a float within 0..1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be within 0..1, got {value}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


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
            speed = r.seconds / r.elapsed if r.elapsed > 0 else float("inf")
            print(f"{r.src} -> {r.dst}  ({r.seconds:.1f} s audio, {speed:.0f}x real time)")
    return EXIT_FAILED if failures or errors else EXIT_OK


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
    print(f"model        {m.path}")
    print(f"name         {c.get('name')} {c.get('version', '')}")
    print(f"architecture {c.get('architecture', '?')}")
    print(f"rate / hop   {m.sample_rate} Hz / {m.hop} samples ({1000 * m.hop / m.sample_rate:.1f} ms)")
    print(f"latency      {lat} samples ({1000 * lat / m.sample_rate:.2f} ms) at the model's rate")
    print(f"parameters   {c.get('parameters', '?'):,}" if isinstance(c.get("parameters"), int) else "parameters   ?")
    for s in m.states:
        print(f"state        {s.name} {['channels' if d is None else d for d in s.shape]}")
    return EXIT_OK


SUBCOMMANDS: list[Callable] = [_add_file, _add_demo, _add_info]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dereverb", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    from stream import __version__

    parser.add_argument("--version", action="version", version=f"dereverb {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except CliError as exc:
        print(f"dereverb: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("dereverb: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
