"""Loading an ONNX dereverberation model and checking it against the model contract.

The contract (``models/README.md``): the graph is a pure step function with input ``audio``
float32 ``[channels, n * hop]`` plus one input per state tensor, and outputs ``audio_out`` plus
``<state>_out`` for each state input. State tensors are discovered from the graph's own inputs and
bound by name, never by position. Sample rate, hop and latency come from the ONNX metadata
(``dereverb.card``, a JSON card) and the JSON card stored beside the file; the two must agree with
each other and with the graph.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

AUDIO_IN = "audio"
AUDIO_OUT = "audio_out"
# Optional output, float32 [channels, n] (one value per hop, 0..1): how much of each hop the model passes
# through unchanged. A model with a music gate has it; the engine uses it (stream.engine).
PASS_SHARE = "pass_share"
BATCH_DIM = "channels"
CARD_KEY = "dereverb.card"


class ModelError(RuntimeError):
    """The model file is missing, unreadable or does not follow the contract."""


def default_model_path() -> Path:
    """The shipped default model (``models/`` package data)."""
    import models

    return models.default_model_path()


@dataclass(frozen=True)
class StateSpec:
    """One state tensor: its name, shape with the channel axis as ``None``, and that axis."""

    name: str
    shape: tuple[int | None, ...]
    batch_axis: int

    def zeros(self, channels: int) -> np.ndarray:
        shape = [channels if d is None else d for d in self.shape]
        return np.zeros(shape, dtype=np.float32)


@dataclass(frozen=True)
class SessionOptions:
    """ONNX Runtime settings; one intra-op thread is the fastest for a 1-hop step (docs/onnxruntime.md).

    threads: intra-op threads (1 = one core per stream; 2 only speeds up many hops per call).
    """

    threads: int = 1


@dataclass
class StepModel:
    """An ONNX step model, ready to run. ``run`` is pure: it never keeps state between calls.

    Attributes:
        path: the .onnx file.
        sample_rate: the model's rate in Hz.
        hop: samples per hop; ``audio`` must be a whole number of hops.
        step_latency: delay of the step function in samples at ``sample_rate``.
        states: the state tensors, in graph order (bound by name, the order is irrelevant).
        card: the model card (dict).
        rest_seconds: seconds of silence the start state has "heard" (card key ``rest_state_seconds``,
            0 = the all-zero state); see ``initial_state``. The card's ``rest_state`` holds the state
            itself (computed at export); without it the runtime computes it at load.
        rest_share: the ``pass_share`` (0..1) on digital silence from the rest state (0 without that output).
    """

    path: Path
    sample_rate: int
    hop: int
    step_latency: int
    states: tuple[StateSpec, ...]
    card: dict
    _session: object = field(repr=False)
    _output_names: list[str] = field(repr=False)
    rest_seconds: float = 0.0
    has_pass_share: bool = False
    # Where a stream's smoothing of pass_share (stream.engine's DC bypass) starts, so that silence
    # leaves it where it is.
    rest_share: float = 0.0
    _rest: dict[str, np.ndarray] | None = field(default=None, repr=False)

    @classmethod
    def load(cls, path: str | Path | None = None, options: SessionOptions = SessionOptions()) -> StepModel:
        """Load and validate a model; ``None`` loads the shipped default.

        Raises:
            ModelError: naming what is missing or inconsistent.
        """
        path = Path(path) if path is not None else default_model_path()
        if not path.is_file():
            raise ModelError(f"{path}: model file not found")
        import onnxruntime as ort

        try:
            session = ort.InferenceSession(str(path), ort_session_options(options.threads),
                                           providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises several unrelated types for a bad file
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"{path}: not a loadable ONNX model ({first})") from None
        card = _read_card(path, session)
        states = _discover_states(path, session)
        _check_card_against_graph(path, card, states)
        has_share = _check_pass_share(path, session)
        model = cls(
            path=path,
            sample_rate=int(card["sample_rate"]),
            hop=int(card["hop"]),
            step_latency=int(card["latency_samples"]),
            states=states,
            card=card,
            _session=session,
            _output_names=[AUDIO_OUT] + [f"{s.name}_out" for s in states] + ([PASS_SHARE] if has_share else []),
            rest_seconds=float(card.get("rest_state_seconds", 0.0)),
            has_pass_share=has_share,
        )
        model._rest = _card_rest_state(path, card, states) if "rest_state" in card else model._settle(model.rest_seconds)
        if has_share:
            _, share, _ = model.run_with_share(np.zeros((1, model.hop), np.float32), model.initial_state(1))
            model.rest_share = float(share[0, -1])
        return model

    def zero_state(self, channels: int) -> dict[str, np.ndarray]:
        """All-zero state for ``channels`` independent channels."""
        return {s.name: s.zeros(channels) for s in self.states}

    def initial_state(self, channels: int) -> dict[str, np.ndarray]:
        """The state every stream starts from, for ``channels`` independent channels: the rest state.

        Why not zeros: a recurrent model's output depends on what it heard before. A live stream
        has always heard silence before the talker starts, a file has not; starting both from the
        state silence leads to (a fixed point the model reaches within ``rest_seconds``) makes
        the two give the same output for the same audio, and a leading pause in a file changes
        nothing.
        """
        assert self._rest is not None
        return {s.name: np.repeat(self._rest[s.name], channels, axis=s.batch_axis) for s in self.states}

    def _settle(self, seconds: float) -> dict[str, np.ndarray]:
        """One channel's state after ``seconds`` of digital silence from the zero state."""
        state = self.zero_state(1)
        hops = int(round(seconds * self.sample_rate / self.hop))
        for start in range(0, hops, 64):
            n = min(64, hops - start)
            _, state = self.run(np.zeros((1, n * self.hop), np.float32), state)
        return state

    def run(self, audio: np.ndarray, state: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One step: ``audio`` float32 [channels, n * hop] -> (audio_out [channels, n * hop], new state)."""
        out, _, new = self.run_with_share(audio, state)
        return out, new

    def run_with_share(self, audio: np.ndarray, state: dict[str, np.ndarray]
                       ) -> tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray]]:
        """``run``, plus the model's ``pass_share`` [channels, n] (None if the graph has no such output)."""
        feeds = {AUDIO_IN: audio}
        feeds.update(state)
        outs = self._session.run(self._output_names, feeds)
        share = outs.pop() if self.has_pass_share else None
        return outs[0], share, {s.name: o for s, o in zip(self.states, outs[1:])}

    def bind(self, channels: int, max_hops: int) -> BoundStep:
        """Buffers and ONNX Runtime IO bindings for running up to ``max_hops`` hops per call in place."""
        return BoundStep(self, channels, max_hops)

    def run_bound(self, bound: BoundStep, hops: int) -> tuple[np.ndarray, np.ndarray | None]:
        """One step in place: ``bound.audio_in(hops)`` and ``bound.state`` -> (audio_out view [channels,
        hops * hop], pass_share view [channels, hops] or None); ``bound.state`` becomes the new state.
        The views stay valid until the next call. Same numbers as ``run_with_share``."""
        return bound.run(hops)


class BoundStep:
    """The model's step bound to preallocated memory, so a call allocates no array.

    ONNX Runtime reads the input audio and the state from, and writes the output audio, pass-through
    share and next state into, buffers made here once (``InferenceSession.run_with_iobinding``); the
    state lives in two sets that swap at each call (a graph's input and output must not share memory).
    One binding per (hop count, state set), made on first use. ``run`` through a ``StepModel`` instead
    creates every output as a new array and converts the inputs at each call.
    """

    def __init__(self, model: StepModel, channels: int, max_hops: int) -> None:
        self.model, self.channels, self.max_hops = model, channels, max_hops
        span = channels * max_hops * model.hop
        self._audio = np.zeros(span, np.float32)
        self._out = np.zeros(span, np.float32)
        self._share = np.zeros(channels * max_hops, np.float32) if model.has_pass_share else None
        self._states = (model.zero_state(channels), model.zero_state(channels))
        self._cur = 0
        self._bindings: dict[tuple[int, int], object] = {}

    @property
    def state(self) -> dict[str, np.ndarray]:
        """The current state (the arrays the next call reads; overwritten in place by later calls)."""
        return self._states[self._cur]

    def load(self, state: dict[str, np.ndarray]) -> None:
        """Make ``state`` (name -> array, e.g. ``StepModel.initial_state``) the current state."""
        for name, value in self._states[self._cur].items():
            np.copyto(value, state[name])

    def audio_in(self, hops: int) -> np.ndarray:
        """The input audio of the next ``hops``-hop call, a writable view [channels, hops * hop]."""
        return self._audio[: self.channels * hops * self.model.hop].reshape(self.channels, -1)

    def run(self, hops: int) -> tuple[np.ndarray, np.ndarray | None]:
        """See ``StepModel.run_bound``."""
        if not 1 <= hops <= self.max_hops:
            raise ValueError(f"hops must be within 1..{self.max_hops}, got {hops}")
        key = (hops, self._cur)
        binding = self._bindings.get(key)
        if binding is None:
            binding = self._bindings[key] = self._bind(hops)
        self.model._session.run_with_iobinding(binding)
        self._cur = 1 - self._cur
        c = self.channels
        y = self._out[: c * hops * self.model.hop].reshape(c, -1)
        return y, (None if self._share is None else self._share[: c * hops].reshape(c, hops))

    def _bind(self, hops: int):
        c, hop = self.channels, self.model.hop
        src, dst = self._states[self._cur], self._states[1 - self._cur]
        binding = self.model._session.io_binding()

        def ptr(a: np.ndarray) -> int:
            return a.__array_interface__["data"][0]

        audio, out = self.audio_in(hops), self._out[: c * hops * hop].reshape(c, -1)
        binding.bind_input(AUDIO_IN, "cpu", 0, np.float32, list(audio.shape), ptr(audio))
        binding.bind_output(AUDIO_OUT, "cpu", 0, np.float32, list(out.shape), ptr(out))
        for s in self.model.states:
            binding.bind_input(s.name, "cpu", 0, np.float32, list(src[s.name].shape), ptr(src[s.name]))
            binding.bind_output(f"{s.name}_out", "cpu", 0, np.float32, list(dst[s.name].shape), ptr(dst[s.name]))
        if self._share is not None:
            binding.bind_output(PASS_SHARE, "cpu", 0, np.float32, [c, hops], ptr(self._share))
        return binding


def ort_session_options(threads: int = 1):
    """The onnxruntime ``SessionOptions`` every model session uses, with ``threads`` intra-op threads.

    Chosen by measurement (docs/onnxruntime.md, `python -m benchmarks.ort_settings`): one stream, one
    core; a sequential graph needs no inter-op pool, full graph optimisation is never slower, and the
    default CPU arena and memory pattern cost nothing extra. The engine runs the step through IO
    binding to preallocated buffers (``BoundStep``), which also skips run()'s per-call conversions."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return so


def _read_card(path: Path, session) -> dict:
    meta = session.get_modelmeta().custom_metadata_map
    embedded = json.loads(meta[CARD_KEY]) if CARD_KEY in meta else None
    beside = path.with_suffix(".json")
    card = json.loads(beside.read_text()) if beside.is_file() else None
    if embedded is None and card is None:
        raise ModelError(f"{path}: no model card (neither '{CARD_KEY}' metadata nor {beside.name})")
    card = card if card is not None else embedded
    for key in ("sample_rate", "hop", "latency_samples", "states"):
        if key not in card:
            raise ModelError(f"{path}: model card does not state '{key}'")
        if embedded is not None and key in embedded and embedded[key] != card[key]:
            raise ModelError(f"{path}: card {beside.name} disagrees with the ONNX metadata on '{key}'")
    if not isinstance(card["sample_rate"], int) or not 8000 <= card["sample_rate"] <= 192000:
        raise ModelError(f"{path}: model card has no valid sample_rate ({card['sample_rate']!r})")
    rest = card.get("rest_state_seconds", 0.0)
    if isinstance(rest, bool) or not isinstance(rest, (int, float)) or not 0.0 <= rest <= 3600.0:
        raise ModelError(f"{path}: model card has an invalid rest_state_seconds ({rest!r}), expected 0..3600")
    return card


def _card_rest_state(path: Path, card: dict, states: tuple[StateSpec, ...]) -> dict[str, np.ndarray]:
    """The card's ``rest_state`` (one channel per state, computed at export), checked against the graph."""
    given = card["rest_state"]
    if not isinstance(given, dict) or set(given) != {s.name for s in states}:
        raise ModelError(f"{path}: card rest_state must give every state of the graph: {sorted(s.name for s in states)}")
    rest = {}
    for s in states:
        try:
            value = np.asarray(given[s.name], dtype=np.float32)
        except (TypeError, ValueError):
            raise ModelError(f"{path}: card rest_state '{s.name}' is not a numeric array") from None
        want = tuple(1 if d is None else d for d in s.shape)
        if value.shape != want or not np.isfinite(value).all():
            raise ModelError(f"{path}: card rest_state '{s.name}' must be finite with shape {list(want)}, "
                             f"got {list(value.shape)}")
        rest[s.name] = value
    return rest


def _discover_states(path: Path, session) -> tuple[StateSpec, ...]:
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    if AUDIO_IN not in inputs:
        raise ModelError(f"{path}: graph has no '{AUDIO_IN}' input")
    if AUDIO_OUT not in outputs:
        raise ModelError(f"{path}: graph has no '{AUDIO_OUT}' output")
    specs = []
    for name, inp in inputs.items():
        if name == AUDIO_IN:
            continue
        if f"{name}_out" not in outputs:
            raise ModelError(f"{path}: state input '{name}' has no '{name}_out' output")
        if inp.type != "tensor(float)":
            raise ModelError(f"{path}: state input '{name}' is {inp.type}, expected tensor(float)")
        batch_axes = [i for i, d in enumerate(inp.shape) if d == BATCH_DIM]
        if len(batch_axes) != 1:
            raise ModelError(f"{path}: state input '{name}' has no '{BATCH_DIM}' axis (shape {inp.shape})")
        shape = tuple(None if d == BATCH_DIM else int(d) for d in inp.shape)
        specs.append(StateSpec(name, shape, batch_axes[0]))
    if not specs:
        raise ModelError(f"{path}: graph has no state inputs; a stateless model cannot stream")
    return tuple(specs)


def _check_pass_share(path: Path, session) -> bool:
    """Whether the graph has the optional ``pass_share`` output, checked for its type and channel axis."""
    out = {o.name: o for o in session.get_outputs()}.get(PASS_SHARE)
    if out is None:
        return False
    if out.type != "tensor(float)" or len(out.shape) != 2 or out.shape[0] != BATCH_DIM:
        raise ModelError(f"{path}: output '{PASS_SHARE}' must be float32 [{BATCH_DIM}, hops], "
                         f"got {out.type} {out.shape}")
    return True


def _check_card_against_graph(path: Path, card: dict, states: tuple[StateSpec, ...]) -> None:
    declared = card["states"]
    graph_names = {s.name for s in states}
    if set(declared) != graph_names:
        raise ModelError(
            f"{path}: card states {sorted(declared)} disagree with the graph's state inputs {sorted(graph_names)}"
        )
    for s in states:
        card_shape = tuple(None if d == BATCH_DIM else d for d in declared[s.name]["shape"])
        if card_shape != s.shape:
            raise ModelError(f"{path}: card shape of '{s.name}' {declared[s.name]['shape']} disagrees with the graph")
