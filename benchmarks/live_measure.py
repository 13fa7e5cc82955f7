"""Measure ``dereverb live`` through a real JACK server: added latency, processing load, xruns.

    python -m benchmarks.live_measure --periods 128 256 --seconds 60 --out live_measure.json

For each JACK period it starts ``jackd --no-realtime -d dummy -r RATE -p PERIOD`` (stopped by its PID at
the end), then runs ``dereverb live`` as a subprocess, once as a pass-through baseline and once per
processing mode. A probe client in this process (a sounddevice stream named ``dereverb-probe``) plays
the bundled reverberant clip into ``dereverb:in_0`` and records ``dereverb:out_0``; the routing uses
``jack_connect``. The lag of the recording is measured by cross-correlation against the expected
output (the input itself for pass-through, file mode's output otherwise).

The same pieces (``JackServer``, ``Probe``, ``run_live_through_jack``) drive the live-mode tests. A
measurement harness, not part of the installed runtime: it re-initialises PortAudio in this process
through sounddevice's private ``_initialize``/``_terminate`` (see ``portaudio_for_jack``), which the
runtime never does. Needs the Debian packages jackd2 and libportaudio2.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from stream.devices import JACK_CLIENT_NAME, import_sounddevice, set_jack_client_name
from stream.live_report import cpu_steal_seconds, steal_share

PROBE_CLIENT_NAME = b"dereverb-probe"  # constant: PortAudio keeps the pointer (see devices.JACK_CLIENT_NAME)
LIVE_CLIENT = JACK_CLIENT_NAME.decode()


class JackUnavailable(RuntimeError):
    """No JACK server could be started here; the message says why."""


# ----------------------------------------------------------------------------------------------- jack
class JackServer:
    """``jackd --no-realtime -d dummy`` as a child process, stopped by its PID on exit.

    The dummy driver needs no sound card and, with --no-realtime, no privileges or D-Bus. ``name`` (the
    server name) lets several servers coexist; clients pick it up from JACK_DEFAULT_SERVER, which
    ``env`` returns for subprocesses.
    """

    def __init__(self, rate: int = 48000, period: int = 256, name: str | None = None):
        self.rate, self.period, self.name = rate, period, name
        self.proc: subprocess.Popen | None = None
        self.log = tempfile.NamedTemporaryFile(prefix="jackd-", suffix=".log", delete=False)

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.name:
            env["JACK_DEFAULT_SERVER"] = self.name
        else:
            env.pop("JACK_DEFAULT_SERVER", None)
        return env

    def start(self) -> JackServer:
        jackd = shutil.which("jackd")
        if jackd is None or shutil.which("jack_wait") is None:
            raise JackUnavailable("jackd/jack_wait not installed (Debian package jackd2)")
        # jack_wait would also succeed against another server of the same name: refuse to share one.
        check = subprocess.run(["jack_wait", "-c"], capture_output=True, text=True, env=self.env, timeout=15)
        if check.stdout.strip() == "running":
            raise JackUnavailable(f"a JACK server named {self.name or 'default'!r} already runs; stop it first")
        cmd = [jackd, "--no-realtime"] + (["-n", self.name] if self.name else []) + [
            "-d", "dummy", "-r", str(self.rate), "-p", str(self.period)]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=self.env)
        try:
            ready = subprocess.run(["jack_wait", "-w", "-t", "5"], capture_output=True, text=True, env=self.env,
                                   timeout=15)
        except subprocess.TimeoutExpired:
            ready = None
        if ready is None or ready.returncode != 0 or self.proc.poll() is not None:
            self.stop()
            tail = Path(self.log.name).read_text(errors="replace").strip().splitlines()[-3:]
            raise JackUnavailable(f"jackd did not start: {' | '.join(tail) or 'no output'}")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> JackServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        Path(self.log.name).unlink(missing_ok=True)

    # ------------------------------------------------------------------------------------ routing
    def ports(self, client: str) -> list[str]:
        """Ports of ``client`` (exact client name), in JACK's order."""
        out = subprocess.run(["jack_lsp"], capture_output=True, text=True, env=self.env, timeout=10).stdout
        return [p for p in out.splitlines() if p.split(":", 1)[0] == client]

    def wait_ports(self, client: str, timeout: float, proc: subprocess.Popen | None = None) -> list[str]:
        """Wait until ``client`` has input and output ports (or ``proc`` exits); returns them, [] on timeout.

        PortAudio registers a stream's ports one by one, so the inputs can be visible before the outputs.
        """
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            ports = self.ports(client)
            ins, outs = split_ports(ports)
            if (ins and outs) or (proc is not None and proc.poll() is not None):
                return ports
            time.sleep(0.05)
        return []

    def route(self, src: str, dst: str) -> None:
        """Connect src -> dst, after cutting every other connection of both (PortAudio auto-connects
        its ports to the system ports)."""
        for port in (src, dst):
            out = subprocess.run(["jack_lsp", "-c", port], capture_output=True, text=True, env=self.env,
                                 timeout=10).stdout.splitlines()
            for peer in (line.strip() for line in out[1:] if line.startswith((" ", "\t"))):
                a, b = (port, peer) if port == src else (peer, port)
                subprocess.run(["jack_disconnect", a, b], capture_output=True, env=self.env, timeout=10)
        r = subprocess.run(["jack_connect", src, dst], capture_output=True, text=True, env=self.env, timeout=10)
        if r.returncode != 0:
            raise RuntimeError(f"jack_connect {src} {dst} failed: {r.stderr.strip()}")


def _port_index(port: str) -> int:
    return int(port.rsplit("_", 1)[1])


def split_ports(ports: list[str]) -> tuple[list[str], list[str]]:
    """PortAudio's JACK ports -> (inputs, outputs), each in channel order (numbers never reset)."""
    ins = sorted((p for p in ports if p.split(":", 1)[1].startswith("in_")), key=_port_index)
    outs = sorted((p for p in ports if p.split(":", 1)[1].startswith("out_")), key=_port_index)
    return ins, outs


@contextmanager
def portaudio_for_jack(jack: JackServer) -> Iterator[ModuleType]:
    """sounddevice in this process, (re)initialised so PortAudio sees ``jack`` and names us the probe.

    PortAudio caches devices at initialisation: a process that imported sounddevice before the server
    started must terminate and re-initialise it. On exit PortAudio is terminated, which must happen
    while the server still runs (pa_jack asserts in Pa_Terminate otherwise): nest this inside the
    ``JackServer`` block.
    """
    saved_server = os.environ.get("JACK_DEFAULT_SERVER")
    if jack.name:
        os.environ["JACK_DEFAULT_SERVER"] = jack.name  # read by libjack when PortAudio initialises
    sd = sys.modules.get("sounddevice")
    if sd is not None:
        while sd._initialized:
            sd._terminate()
        set_jack_client_name(PROBE_CLIENT_NAME)
        sd._initialize()
    else:
        sd = import_sounddevice(PROBE_CLIENT_NAME)
    try:
        if not any("JACK" in h["name"] and h["devices"] for h in sd.query_hostapis()):
            raise JackUnavailable("PortAudio does not see the JACK server (no JACK host API with devices)")
        yield sd
    finally:
        while sd._initialized:
            sd._terminate()
        if saved_server is None:
            os.environ.pop("JACK_DEFAULT_SERVER", None)
        else:
            os.environ["JACK_DEFAULT_SERVER"] = saved_server


# ---------------------------------------------------------------------------------------------- probe
class Probe:
    """A one-in one-out JACK client: on ``play()`` it plays ``signal`` and records the same number of
    frames plus ``tail``, from the same callback, so recording index k lines up with played index k.

    Args:
        signal: float32 [frames] mono at the server's rate.
        tail: extra frames recorded after the signal ends (must cover the lag being measured).
    """

    def __init__(self, sd: ModuleType, rate: int, signal: np.ndarray, tail: int):
        self.signal = np.ascontiguousarray(signal, np.float32)
        self.recording = np.zeros(self.signal.shape[0] + tail, np.float32)
        self.pos = -1  # -1 = idle; else frames played/recorded so far
        self.xruns = 0
        self.done = threading.Event()
        jack = next(i for i, h in enumerate(sd.query_hostapis()) if "JACK" in h["name"])
        device = sd.query_hostapis(jack)["default_output_device"]
        self.stream = sd.Stream(device=device, channels=1, samplerate=rate, dtype="float32",
                                callback=self._callback)

    def _callback(self, indata: np.ndarray, outdata: np.ndarray, frames: int, t: Any, status: Any) -> None:
        if status:
            self.xruns += 1
        p = self.pos
        if p < 0:
            outdata.fill(0.0)
            return
        rec, sig = self.recording, self.signal
        n = min(frames, rec.shape[0] - p)
        rec[p : p + n] = indata[:n, 0]
        m = max(0, min(frames, sig.shape[0] - p))
        outdata[:m, 0] = sig[p : p + m]
        outdata[m:] = 0.0
        self.pos = p + frames
        if self.pos >= rec.shape[0]:
            self.pos = -1
            self.done.set()

    def ports(self, jack: JackServer) -> tuple[str, str]:
        ins, outs = split_ports(jack.ports(PROBE_CLIENT_NAME.decode()))
        return ins[0], outs[0]

    def play(self) -> None:
        self.xruns = 0
        self.pos = 0

    def __enter__(self) -> Probe:
        self.stream.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stream.stop()
        self.stream.close()


# -------------------------------------------------------------------------------------------- analysis
def find_lag(recording: np.ndarray, reference: np.ndarray, max_lag: int) -> tuple[int, float]:
    """Lag (frames) at which ``reference`` best matches ``recording`` and the normalised correlation there."""
    n = recording.shape[0] + reference.shape[0]
    size = 1 << int(np.ceil(np.log2(n)))
    xc = np.fft.irfft(np.fft.rfft(recording, size) * np.conj(np.fft.rfft(reference, size)), size)[: max_lag + 1]
    lag = int(np.argmax(xc))
    seg = recording[lag : lag + reference.shape[0]]
    ref = reference[: seg.shape[0]]
    corr = float(np.dot(seg, ref) / (np.linalg.norm(seg) * np.linalg.norm(ref) + 1e-12))
    return lag, corr


def window_errors(aligned: np.ndarray, reference: np.ndarray, window: int) -> np.ndarray:
    """Per-window relative error ||a - r|| / ||r|| over windows of ``window`` frames (NaN where r is silent)."""
    k = min(aligned.shape[0], reference.shape[0]) // window
    a = aligned[: k * window].reshape(k, window).astype(np.float64)
    r = reference[: k * window].reshape(k, window).astype(np.float64)
    ref = np.linalg.norm(r, axis=1)
    err = np.linalg.norm(a - r, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ref > 1e-4, err / ref, np.nan)


def file_mode_reference(aligned: np.ndarray, x: np.ndarray, rate: int, model=None,
                        search_seconds: float = 1.0) -> tuple[np.ndarray, int]:
    """File mode's output for the input the live run really heard: silence, then ``x`` starting at an
    unknown sample phase within the engine's framing period. Returns (reference [frames], phase).

    Why a phase: an STFT model frames its input in hops, so delaying the input by a fraction of a hop
    changes the output (measured on the probe at 48 kHz: median window error 0.02 for 1 sample, 0.13
    for half a hop). A live stream's input starts wherever the player's first sample lands, so file
    mode is run on ``p`` zeros + ``x`` for the phase ``p`` that matches the recording best (``aligned``
    = the live output from the probe's first sample on). The error is not smooth in ``p`` (the right
    phase is a dip a few samples wide), so every phase of the period is tried on ``search_seconds``.
    """
    from stream.engine import dereverb_array
    from stream.model import StepModel

    model = model if model is not None else StepModel.load(None)
    if (model.hop * rate) % model.sample_rate:
        raise ValueError("the framing period is not a whole number of samples at this rate")
    period = model.hop * rate // model.sample_rate
    n = min(int(search_seconds * rate), x.shape[0], aligned.shape[0])

    def out(p: int, length: int) -> np.ndarray:
        # At least one whole period of silence first: the live stream's first samples were silence, and
        # the model frames its input in hops, so the lead also sets the sample phase.
        lead = period + p
        return dereverb_array(np.concatenate([np.zeros(lead, np.float32), x[:length]]), rate, model=model)[lead:]

    def score(p: int) -> float:
        return float(np.nanmedian(window_errors(aligned[:n], out(p, n), 256)))

    best = min(range(period), key=score)
    return out(best, x.shape[0]), best


def probe_signal(rate: int, seconds: float) -> np.ndarray:
    """The bundled reverberant clip at ``rate``, looped to ``seconds``: float32 [frames] mono."""
    import soundfile as sf

    from stream.demo import DEMO_CLIP
    from stream.resample import Resampler

    x, sr = sf.read(str(DEMO_CLIP), dtype="float32", always_2d=True)
    x = x[:, 0]
    if sr != rate:
        rs = Resampler(sr, rate)
        x = rs.step(x[None, :], rs.initial_state(1))[0][0]
    reps = int(np.ceil(seconds * rate / x.shape[0]))
    return np.tile(x, reps)[: int(seconds * rate)].astype(np.float32)


@dataclass
class LiveRun:
    """One ``dereverb live`` run through JACK: its JSON summary and what the probe saw.

    ``steal_fraction``: hypervisor steal while the probe played and recorded (``stream.live_report.steal_share``)."""

    summary: dict[str, Any]
    recording: np.ndarray
    probe_xruns: int
    returncode: int
    stdout: str
    stderr: str
    steal_fraction: float = 0.0


def default_sigint() -> None:
    """Child-process setup: Ctrl-C (SIGINT) at its default. A shell starts background jobs with SIGINT
    ignored, and a child inherits that; the run must react to SIGINT as a terminal user's does."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_live_through_jack(jack: JackServer, probe: Probe, args: list[str], stats: Path,
                          settle_s: float = 1.0, startup_timeout: float = 60.0, interrupt: bool = False) -> LiveRun:
    """Start ``dereverb live ARGS --stats STATS`` (ARGS must hold --duration), route probe -> live -> probe,
    play the probe's signal once, and wait for the run to end.

    Without ``interrupt`` the run ends by its ``--duration``, which must then cover the routing, ``settle_s``
    and the probe's recording; with it, the run gets SIGINT (Ctrl-C) as soon as the recording is done.
    """
    cmd = [sys.executable, "-m", "stream.cli", "live", "--channels", "1", "--stats", str(stats), *args]
    env = jack.env
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            text=True, env=env, preexec_fn=default_sigint)
    try:
        ports = jack.wait_ports(LIVE_CLIENT, startup_timeout, proc)
        if not ports:
            proc.kill()
            out, err = proc.communicate()
            raise RuntimeError(f"dereverb live did not register JACK ports (rc={proc.returncode}): {err.strip()}")
        ins, outs = split_ports(ports)
        if not (ins and outs):
            raise RuntimeError(f"dereverb live exited before registering its JACK ports: {proc.communicate()[1]}")
        probe_in, probe_out = probe.ports(jack)
        jack.route(probe_out, ins[0])
        jack.route(outs[0], probe_in)
        time.sleep(settle_s)  # let the engine run on silence first, as a live user would
        probe.done.clear()
        steal0, t0 = cpu_steal_seconds(), time.monotonic()
        probe.play()
        seconds = probe.recording.shape[0] / jack.rate
        if not probe.done.wait(seconds + 30):
            raise RuntimeError("the probe never finished recording (JACK stalled?)")
        steal = steal_share(steal0, time.monotonic() - t0)
        if interrupt:
            proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    summary = json.loads(stats.read_text()) if stats.exists() else {}
    return LiveRun(summary, probe.recording.copy(), probe.xruns, proc.returncode, out, err, round(steal, 4))


# ------------------------------------------------------------------------------------------------ main
def measure(periods: list[int], seconds: float, rate: int, modes: list[list[str]], out: Path | None,
            repeat: int = 1) -> list[dict]:
    """Run pass-through and each mode at each period, ``repeat`` interleaved rounds (so a load burst on
    the machine hits all modes alike); print and return one row per run."""
    from stream.engine import dereverb_array

    x = probe_signal(rate, seconds)
    expected = dereverb_array(x, rate)  # file mode on the same input, time-aligned
    rows = []
    for period in periods:
        with JackServer(rate, period) as jack, portaudio_for_jack(jack) as sd:
            max_lag = rate  # 1 s: far above any latency here
            with Probe(sd, rate, x, tail=max_lag) as probe, tempfile.TemporaryDirectory() as tmp:
                for mode, round_ in [(m, r) for r in range(repeat) for m in [["--passthrough"], *modes]]:
                    stats = Path(tmp) / "stats.json"
                    stats.unlink(missing_ok=True)
                    duration = seconds + 8.0
                    run = run_live_through_jack(jack, probe, [*mode, "--duration", str(duration)], stats,
                                                interrupt=True)
                    ref = x if mode == ["--passthrough"] else expected
                    lag, corr = find_lag(run.recording, ref, max_lag)
                    s = run.summary
                    row = {"period": period, "round": round_, "mode": " ".join(mode) or "default",
                           "measured_lag_frames": lag,
                           "measured_lag_ms": round(1000 * lag / rate, 3), "correlation": round(corr, 4),
                           "reported_latency_ms": s.get("latency_ms"), "xruns": s.get("xruns"),
                           "probe_xruns": run.probe_xruns, "block_ms": s.get("block_ms"), "load": s.get("load"),
                           "duration_s": s.get("duration_s"), "returncode": run.returncode,
                           "loadavg_1min": round(os.getloadavg()[0], 2),  # other work on the machine
                           "steal_fraction": run.steal_fraction}  # other guests on the VM's host
                    for k in ("fifo_underruns", "resync_frames", "callback_max_ms"):
                        if k in s:
                            row[k] = s[k]
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    print_table(rows, rate)
    if out is not None:
        out.write_text(json.dumps(rows, indent=2) + "\n")
    return rows


def print_table(rows: list[dict], rate: int) -> None:
    """Per period and mode: added latency over pass-through (measured / reported), load, xruns summed
    over the rounds against the pass-through runs of the same rounds."""
    print("\nperiod  mode            rounds  added latency measured / reported  load mean / p99 / max"
          "   xruns (pass-through)   s   steal max")
    keys = list(dict.fromkeys((r["period"], r["mode"]) for r in rows))
    for period, mode in keys:
        if mode == "--passthrough":
            continue
        runs = [r for r in rows if (r["period"], r["mode"]) == (period, mode)]
        base = {r["round"]: r for r in rows if (r["period"], r["mode"]) == (period, "--passthrough")}
        b0 = base[runs[0]["round"]]
        added = 1000 * (runs[0]["measured_lag_frames"] - b0["measured_lag_frames"]) / rate
        reported = runs[0]["reported_latency_ms"]["total"] - b0["reported_latency_ms"]["total"]
        mean = sum(r["load"]["mean"] for r in runs) / len(runs)
        p99 = max(r["load"]["p99"] for r in runs)
        mx = max(r["load"]["max"] for r in runs)
        xr = sum(r["xruns"] for r in runs)
        bx = sum(base[r["round"]]["xruns"] for r in runs)
        secs = sum(r["duration_s"] for r in runs)
        # The worst CPU steal of these runs and their pass-through baselines: above a few percent, the
        # host, not the client, decides the xruns (see cpu_steal_seconds).
        steal = max(r["steal_fraction"] for r in runs + [base[r["round"]] for r in runs])
        print(f"{period:>6}  {mode:<15} {len(runs):>6}  {added:8.2f} ms / {reported:8.2f} ms"
              f"        {100 * mean:4.1f}% / {100 * p99:5.1f}% / {100 * mx:5.1f}%"
              f"   {xr:>6} ({bx:>6})       {secs:5.0f}   {100 * steal:5.1f}%")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.live_measure", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--periods", type=int, nargs="+", default=[128, 256], help="JACK periods (frames)")
    p.add_argument("--seconds", type=float, default=60.0, help="signal length per run (s)")
    p.add_argument("--rate", type=int, default=48000, help="JACK rate (Hz)")
    p.add_argument("--mode", action="append", default=None, metavar="ARGS",
                   help="extra dereverb live arguments for one processing run, e.g. '--buffer-ms 20' "
                        "(repeatable; default: one run with no extra arguments, the default mode)")
    p.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="interleaved rounds of pass-through + every mode (default 1)")
    p.add_argument("--out", type=Path, default=None, help="write the rows as JSON")
    a = p.parse_args(argv)
    modes = [m.split() for m in a.mode] if a.mode else [[]]
    try:
        measure(a.periods, a.seconds, a.rate, modes, a.out, a.repeat)
    except JackUnavailable as exc:
        print(f"live_measure: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
