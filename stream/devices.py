"""Audio devices for live mode: importing PortAudio safely, listing devices, choosing them, their layout
and the stream's rate.

Device selection and channel layout are pure: they work on plain lists of ``DeviceInfo``, so they and
their error messages are testable without PortAudio or a sound card. Listing devices and choosing the
rate ask the sounddevice module they are given (a stand-in in the tests).

sounddevice is imported only through ``import_sounddevice`` (live mode and ``dereverb devices``), never at
module import, so file mode keeps working on a machine without PortAudio.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Literal

PORTAUDIO_PACKAGE = "libportaudio2"
# The JACK client name live mode registers under, so users (and the tests) find its ports as
# "dereverb:in_N" / "dereverb:out_N" instead of the generic "PortAudio". A module constant on purpose:
# PaJack_SetClientName keeps the pointer, not a copy, so the bytes must live as long as the process.
JACK_CLIENT_NAME = b"dereverb"

Kind = Literal["input", "output"]


class AudioDeviceError(RuntimeError):
    """A problem with the audio system that the user can fix; the message is one line."""


@dataclass(frozen=True)
class DeviceInfo:
    """One PortAudio device.

    Attributes:
        index: PortAudio device index (what ``-i``/``-o`` accept).
        name: device name as PortAudio reports it.
        hostapi: host API name (ALSA, JACK Audio Connection Kit, Core Audio, WASAPI, ...).
        max_input_channels / max_output_channels: channel counts (0 = not an input / output).
        default_samplerate: the device's own rate in Hz.
    """

    index: int
    name: str
    hostapi: str
    max_input_channels: int
    max_output_channels: int
    default_samplerate: float

    def channels(self, kind: Kind) -> int:
        return self.max_input_channels if kind == "input" else self.max_output_channels

    def label(self) -> str:
        return f"{self.index} ({self.name}, {self.hostapi})"


@dataclass(frozen=True)
class Layout:
    """Channel routing between the devices and the engine.

    Attributes:
        channels: channels the engine processes (the first ``channels`` input channels).
        input_channels: channels opened on the input device (== ``channels``).
        output_channels: channels opened on the output device; a mono stream is copied to every one.
    """

    channels: int
    input_channels: int
    output_channels: int


@dataclass(frozen=True)
class StreamSetup:
    """What a live stream opens: the two devices, the channel layout and the rate in Hz."""

    in_dev: DeviceInfo
    out_dev: DeviceInfo
    layout: Layout
    samplerate: int


# ------------------------------------------------------------------------------------------ PortAudio
def import_sounddevice(jack_client_name: bytes | None = JACK_CLIENT_NAME) -> ModuleType:
    """Import sounddevice (which initialises PortAudio), naming the JACK client first.

    Raises:
        AudioDeviceError: PortAudio is missing (sounddevice raises OSError when libportaudio is absent).
    """
    if "sounddevice" not in sys.modules and jack_client_name:
        set_jack_client_name(jack_client_name)
    try:
        with _quiet_stderr():
            # Pa_Initialize probes every host API; libjack and alsa-lib print diagnostics straight to
            # fd 2 (e.g. "jack server is not running") that would bury our one-line messages.
            import sounddevice
    except OSError as exc:
        raise AudioDeviceError(
            f"PortAudio is missing: install the {PORTAUDIO_PACKAGE} package "
            f"(e.g. 'apt-get install {PORTAUDIO_PACKAGE}') ({exc})") from None
    return sounddevice


def set_jack_client_name(name: bytes) -> bool:
    """Set the JACK client name PortAudio uses at its next initialisation; False if not possible.

    ``name`` must stay alive for the whole process (PortAudio keeps the pointer): pass a constant.
    """
    path = ctypes.util.find_library("portaudio")
    if path is None:
        return False
    try:
        lib = ctypes.CDLL(path)
        setter = lib.PaJack_SetClientName  # absent in PortAudio builds without JACK
    except (OSError, AttributeError):
        return False
    setter.argtypes = [ctypes.c_char_p]
    return setter(name) == 0


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # stderr replaced by an object without a file descriptor
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def query_devices(sd: ModuleType) -> tuple[list[DeviceInfo], int | None, int | None]:
    """All devices, plus the default input and output indices (None when there is none)."""
    hostapis = sd.query_hostapis()
    devices = [
        DeviceInfo(index=i, name=d["name"], hostapi=hostapis[d["hostapi"]]["name"],
                   max_input_channels=int(d["max_input_channels"]),
                   max_output_channels=int(d["max_output_channels"]),
                   default_samplerate=float(d["default_samplerate"]))
        for i, d in enumerate(sd.query_devices())
    ]
    default_in, default_out = _defaults(sd, devices)
    return devices, default_in, default_out


def _defaults(sd: ModuleType, devices: Sequence[DeviceInfo]) -> tuple[int | None, int | None]:
    result = []
    for pos, kind in enumerate(("input", "output")):
        idx = sd.default.device[pos]
        if idx is None or idx < 0:
            try:
                idx = int(sd.query_devices(kind=kind)["index"])
            except Exception:  # PortAudioError / ValueError: no default device of that kind
                idx = -1
        ok = 0 <= idx < len(devices) and devices[idx].channels(kind) > 0
        result.append(idx if ok else None)
    return result[0], result[1]


# ---------------------------------------------------------------------------------------- selection
def parse_device(text: str) -> int | str:
    """argparse type for -i/-o: an index if the text is an integer, else a name substring."""
    try:
        return int(text)
    except ValueError:
        return text


def resolve_device(spec: int | str | None, kind: Kind, devices: Sequence[DeviceInfo],
                   default: int | None) -> DeviceInfo:
    """Pick the ``kind`` device named by ``spec``: an index, a case-insensitive name substring, or None.

    A substring matches the device name or "name, host API" (as sounddevice does). Several matches are
    an error unless exactly one name equals the text, so a script never silently picks the wrong card.

    Raises:
        AudioDeviceError: no devices, no such device, the device has no ``kind`` channels, or ambiguity.
    """
    if not devices:
        raise AudioDeviceError("no audio devices found (no sound card, or the audio server is not running)")
    hint = "run 'dereverb devices' to list them"
    if spec is None:
        if default is None:
            raise AudioDeviceError(f"no default {kind} device; choose one with "
                                   f"{'-i' if kind == 'input' else '-o'} ({hint})")
        return devices[default]
    if isinstance(spec, int):
        if not 0 <= spec < len(devices):
            raise AudioDeviceError(f"{kind} device {spec} not found: indices are 0..{len(devices) - 1} ({hint})")
        dev = devices[spec]
        if dev.channels(kind) == 0:
            raise AudioDeviceError(f"device {dev.label()} has no {kind} channels ({hint})")
        return dev
    text = spec.lower()
    matches = [d for d in devices if d.channels(kind) > 0
               and (text in d.name.lower() or text in f"{d.name}, {d.hostapi}".lower())]
    if not matches:
        raise AudioDeviceError(f"{kind} device '{spec}' not found ({hint})")
    if len(matches) > 1:
        exact = [d for d in matches if d.name.lower() == text]
        if len(exact) == 1:
            return exact[0]
        names = "; ".join(d.label() for d in matches)
        raise AudioDeviceError(f"{kind} device '{spec}' is ambiguous, it matches {names}: use the index")
    return matches[0]


def choose_layout(in_dev: DeviceInfo, out_dev: DeviceInfo, channels: int | None) -> Layout:
    """Decide how many channels to process and open.

    Default: process min(2, input channels, output channels), so a mono microphone is processed as one
    channel and a 2-in interface feeding a mono speaker processes the first input channel. A mono stream
    is copied to the first two output channels (both speakers); a stereo stream goes to two outputs.

    Raises:
        AudioDeviceError: ``channels`` is more than a device has (a mono stream only needs 1 output).
    """
    n_in, n_out = in_dev.max_input_channels, out_dev.max_output_channels
    c = min(2, n_in, n_out) if channels is None else channels
    if c < 1:
        raise AudioDeviceError(f"--channels must be >= 1, got {c}")
    if c > n_in:
        raise AudioDeviceError(f"input device {in_dev.label()} has {n_in} input channel(s), --channels asks {c}")
    out = min(n_out, 2) if c == 1 else c
    if out > n_out:
        raise AudioDeviceError(f"output device {out_dev.label()} has {n_out} output channel(s), "
                               f"--channels asks {c}")
    return Layout(channels=c, input_channels=c, output_channels=out)


def format_devices(devices: Sequence[DeviceInfo], default_in: int | None, default_out: int | None) -> str:
    """A table of devices; '>' marks the default input, '<' the default output, '*' both."""
    if not devices:
        return "no audio devices found"
    name_w = max(4, *(len(d.name) for d in devices))
    api_w = max(8, *(len(d.hostapi) for d in devices))
    lines = [f"    {'idx':>3}  {'name':<{name_w}}  {'host API':<{api_w}}  {'in':>3}  {'out':>3}  {'rate':>6}"]
    for d in devices:
        mark = {(True, True): "*", (True, False): ">", (False, True): "<"}.get(
            (d.index == default_in, d.index == default_out), " ")
        lines.append(f"  {mark} {d.index:>3}  {d.name:<{name_w}}  {d.hostapi:<{api_w}}  "
                     f"{d.max_input_channels:>3}  {d.max_output_channels:>3}  {d.default_samplerate:>6.0f}")
    lines.append("  > default input, < default output, * both")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ the stream
def choose_stream(sd: ModuleType, input_device: int | str | None, output_device: int | str | None,
                  channels: int | None, samplerate: int | None) -> StreamSetup:
    """Resolve devices, channels and rate, and check the devices accept them (before any model loads).

    Args:
        sd: the sounddevice module (``import_sounddevice()``).
        input_device / output_device: index, name substring, or None for the default device.
        channels: channels to process, or None for min(2, input channels, output channels).
        samplerate: stream rate in Hz, or None for the devices' own rate.
    Raises:
        AudioDeviceError: with one line saying what is wrong.
    """
    devices, default_in, default_out = query_devices(sd)
    in_dev = resolve_device(input_device, "input", devices, default_in)
    out_dev = resolve_device(output_device, "output", devices, default_out)
    layout = choose_layout(in_dev, out_dev, channels)
    rate = choose_samplerate(sd, in_dev, out_dev, layout, samplerate)
    return StreamSetup(in_dev, out_dev, layout, rate)


def choose_samplerate(sd: ModuleType, in_dev: DeviceInfo, out_dev: DeviceInfo, layout: Layout,
                      requested: int | None) -> int:
    """The requested rate; else the input device's own rate, the output's, then 48000 and 44100 Hz,
    whichever both devices accept first (the engine resamples any of them to the model's rate).

    Raises:
        AudioDeviceError: the requested rate is refused, or no candidate suits both devices.
    """
    if requested:
        if not 8000 <= requested <= 384000:
            raise AudioDeviceError(f"--samplerate {requested} Hz is outside 8 kHz..384 kHz")
        problem = _check(sd, in_dev, out_dev, layout, requested)
        if problem is not None:
            raise AudioDeviceError(problem)
        return requested
    candidates = list(dict.fromkeys([int(in_dev.default_samplerate), int(out_dev.default_samplerate), 48000, 44100]))
    problems = []
    for rate in candidates:
        problem = _check(sd, in_dev, out_dev, layout, rate) if 8000 <= rate <= 384000 else "out of range"
        if problem is None:
            return rate
        problems.append(problem)
    if in_dev.index == out_dev.index:
        raise AudioDeviceError(problems[0])  # one device refusing its own rate: its specific reason is clearest
    tried = ", ".join(str(r) for r in candidates)
    raise AudioDeviceError(f"input {in_dev.label()} and output {out_dev.label()} share no sample rate "
                           f"(tried {tried} Hz); choose one with --samplerate")


def _check(sd: ModuleType, in_dev: DeviceInfo, out_dev: DeviceInfo, layout: Layout, rate: int) -> str | None:
    for kind, dev, ch, check in (("input", in_dev, layout.input_channels, sd.check_input_settings),
                                 ("output", out_dev, layout.output_channels, sd.check_output_settings)):
        try:
            check(device=dev.index, channels=ch, samplerate=rate, dtype="float32")
        except Exception as exc:  # sd.PortAudioError or ValueError, both carry PortAudio's reason
            reason = str(exc).split(" [PaErrorCode")[0]
            if "sample rate" in reason.lower():
                return f"{kind} device {dev.label()} does not support {rate} Hz (try --samplerate)"
            if "channels" in reason.lower():
                return f"{kind} device {dev.label()} does not support {ch} channel(s) (try --channels)"
            return f"{kind} device {dev.label()} refuses {ch} channel(s) at {rate} Hz: {reason}"
    return None
