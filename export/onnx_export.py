"""Checkpoint -> ONNX step model + JSON contract card (+ weights-only .pt), with a torch-vs-ONNX parity check.

    python -m export CHECKPOINT --out models/NAME.onnx [--name NAME] [--set model.KEY=VALUE ...]

Every piece of state is an explicit named graph input ``<state>`` and output ``<state>_out``; the
channel axis of each is the symbolic dimension ``channels`` so one graph serves any channel count.
The card is written twice: as JSON beside the file (for people and tools) and inside the ONNX
``metadata_props`` under ``dereverb.card`` (so a renamed or copied .onnx still describes itself).
Measured quality is not export's business: ``python -m export.card`` joins an evaluation's results into
the card afterwards (the release step, ``export/card.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from stream.model import PASS_SHARE, StepModel
from training.config import parse_model_sets
from training.model import (MaskLSTM, ModelConfig, channel_axis, count_parameters, load_checkpoint,
                            macs_per_hop, rest_overrides)

OPSET = 17
CARD_FORMAT = "dereverb-step-model/1"


def state_shapes(model: MaskLSTM) -> dict[str, dict]:
    """Card entry per state: its shape, taken from the model's own initial state with the channel axis
    named 'channels', and what it holds."""
    cfg = model.cfg
    holds = {
        "analysis": "previous input hop (analysis window history)",
        "ola": "overlap-add tail of the last synthesis frame",
        "lstm_h": "LSTM hidden state",
        "lstm_c": "LSTM cell state",
        "spec_past": f"spectra (re then im) of the last {cfg.lp_frames} frames, for the linear prediction",
        "music_hold": f"music gate's held pass-through share (0 = the model's mask, 1 = pass-through), released "
                      f"with a {cfg.music_hold_seconds} s time constant"
                      + (f", then the last {cfg.music_clear_frames - 1} raw shares ({cfg.music_clear_frames} "
                         f"sure-speech frames in a row clear the hold)" if cfg.music_clear_frames > 1 else "")
                      + ("; open (1) in the rest state" if cfg.music_start_open else ""),
        "pred_hist": f"late-reverb predictor: spectra (re then im, the {cfg.rls_bins} predicted bins) of the last "
                     f"{cfg.rls_frames} input frames, oldest first",
        "rls_g": f"late-reverb predictor: per-bin filter of {cfg.rls_taps} complex taps [re | im, bin, tap]",
        "rls_p": "late-reverb predictor: per-bin inverse correlation matrix (Hermitian) [re | im, bin, tap, tap]",
        "rls_level": "late-reverb predictor: per-bin running power per tap of its input (scale of P's start and bound)",
        "rls_weight": "late-reverb predictor: weight of the hops behind rls_level (0: the bin has not yet heard sound)",
    }
    out = {}
    for name, tensor in model.initial_state(1).items():
        shape: list[int | str] = list(tensor.shape)
        shape[channel_axis(name)] = "channels"
        out[name] = {"shape": shape, "holds": holds[name]}
    return out


class _Graph(torch.nn.Module):
    """The step as the graph has it: audio, the states and, with the music gate, its per-hop
    pass-through share (``PASS_SHARE``); the gate's logit, which only its training reads, is left out."""

    def __init__(self, model: MaskLSTM) -> None:
        super().__init__()
        self.model = model

    def forward(self, audio: torch.Tensor, *states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.model(audio, *states)[: len(output_names(self.model))]


def output_names(model: MaskLSTM) -> list[str]:
    """The graph's outputs: audio, one per state, and with the music gate ``pass_share``."""
    names = ["audio_out", *(f"{k}_out" for k in model.state_names)]
    return names + [PASS_SHARE] if model.cfg.music_gate else names


def export_onnx(model: MaskLSTM, path: Path) -> None:
    """Trace the step with dynamic channels and length, and write ``path`` (no card yet). A model with
    the late-reverb predictor (``rls_taps``) is traced for one hop and written as an ONNX Loop over
    the hops of a call (``_loop_over_hops``)."""
    cfg = model.cfg
    state = model.initial_state(2)
    names = model.state_names
    hops = 1 if cfg.rls_taps else 3
    args = (torch.randn(2, hops * cfg.hop) * 0.1, *(state[k] for k in names))
    dynamic = {"audio": {0: "channels", 1: "samples"}, "audio_out": {0: "channels", 1: "samples"}}
    for name in names:
        dynamic[name] = {channel_axis(name): "channels"}
        dynamic[f"{name}_out"] = {channel_axis(name): "channels"}
    if cfg.music_gate:
        # Why the runtime wants it: see stream.engine (the DC blocker's complement is passed through
        # with the model where the model passes the input through).
        dynamic[PASS_SHARE] = {0: "channels", 1: "hops"}
    # The tracer warns that LSTM shape checks become constants and that the batch size is fixed:
    # both are false alarms here because h and c are explicit inputs with a symbolic channel axis.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Graph(model),
            args,
            str(path),
            input_names=["audio", *names],
            output_names=output_names(model),
            dynamic_axes=dynamic,
            opset_version=OPSET,
            dynamo=False,
        )
    if cfg.rls_taps:
        import onnx

        onnx.save(_loop_over_hops(onnx.load(str(path)), model), str(path))


def _loop_over_hops(step, model: MaskLSTM):
    """The graph of a one-hop step (``step``, an onnx ModelProto traced with one hop) as a graph that
    takes any whole number of hops: an ONNX Loop whose body is the one-hop step, the states carried
    from hop to hop, the output hops (and ``pass_share``) collected and joined. Why: with the
    late-reverb predictor, frame t's filter needs frame t - 1's early estimate, so no op can run over
    the frames of a call at once; a loop in the graph keeps the contract (any n per call, the same
    output for any split of a stream) and runs the same step the trace recorded.

    Body value names get the prefix "hop/" (a subgraph may not reuse the outer graph's names)."""
    import onnx
    from onnx import TensorProto, helper

    g = step.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in g.node for a in n.attribute):
        raise RuntimeError("the one-hop step has a subgraph: not supported by the hop loop")
    names = list(model.state_names)
    outs = output_names(model)
    pre = "hop/"

    def rn(name: str) -> str:
        return pre + name if name else name

    body_nodes = [helper.make_node("Gather", ["hops_audio", rn("iter")], [rn("audio")], axis=0, name=rn("gather_hop"))]
    for n in g.node:
        node = onnx.NodeProto()
        node.CopyFrom(n)
        node.name = rn(n.name) if n.name else ""
        node.input[:] = [rn(i) for i in n.input]
        node.output[:] = [rn(o) for o in n.output]
        body_nodes.append(node)
    body_nodes.append(helper.make_node("Identity", [rn("cond")], [rn("cond_out")]))
    inits = []
    for t in g.initializer:
        init = TensorProto()
        init.CopyFrom(t)
        init.name = rn(t.name)
        inits.append(init)
    by_in = {v.name: v for v in g.input}
    by_out = {v.name: v for v in g.output}

    def renamed(v, shape: bool = True):
        out = onnx.ValueInfoProto()
        out.CopyFrom(v)
        out.name = rn(v.name)
        if not shape:
            out.type.tensor_type.ClearField("shape")
        return out

    body_inputs = [helper.make_tensor_value_info(rn("iter"), TensorProto.INT64, []),
                   helper.make_tensor_value_info(rn("cond"), TensorProto.BOOL, []),
                   *(renamed(by_in[k]) for k in names)]
    scans = [o for o in outs if o not in {f"{k}_out" for k in names}]  # audio_out, pass_share
    body_outputs = [helper.make_tensor_value_info(rn("cond_out"), TensorProto.BOOL, []),
                    *(renamed(by_out[f"{k}_out"]) for k in names),
                    *(renamed(by_out[o], shape=False) for o in scans)]
    body = helper.make_graph(body_nodes, "hop", body_inputs, body_outputs, initializer=inits)

    hop = model.cfg.hop
    c = {"split3": np.array([0, -1, hop], np.int64), "perm_axes": np.array([0], np.int64),
         "flat2": np.array([0, -1], np.int64)}
    nodes = [helper.make_node("Constant", [], [k], value=onnx.numpy_helper.from_array(v, k)) for k, v in c.items()]
    nodes += [
        helper.make_node("Reshape", ["audio", "split3"], ["audio_hops_bt"]),  # [B, n, hop]
        helper.make_node("Transpose", ["audio_hops_bt"], ["hops_audio"], perm=[1, 0, 2]),  # [n, B, hop]
        helper.make_node("Shape", ["hops_audio"], ["n_hops_1"], start=0, end=1),
        helper.make_node("Squeeze", ["n_hops_1", "perm_axes"], ["n_hops"]),
        helper.make_node("Loop", ["n_hops", "", *names], [*(f"{k}_out" for k in names), *(f"{o}_hops" for o in scans)],
                         body=body),
    ]
    for o in scans:  # [n, B, x] -> [B, n * x]
        nodes.append(helper.make_node("Transpose", [f"{o}_hops"], [f"{o}_bt"], perm=[1, 0, 2]))
        nodes.append(helper.make_node("Reshape", [f"{o}_bt", "flat2"], [o]))
    graph = helper.make_graph(nodes, g.name, [by_in["audio"], *(by_in[k] for k in names)],
                              [by_out[o] for o in outs])
    loop = helper.make_model(graph, opset_imports=step.opset_import, producer_name=step.producer_name)
    loop.ir_version = step.ir_version
    onnx.checker.check_model(loop)
    return loop


def training_stages(summary: dict) -> list[dict]:
    """The runs that made a checkpoint, first to last: each training run's summary names the run it
    continued (``base``), and a music gate's (``music_gate``) comes after the run it sits on."""
    stages = training_stages(summary["base"]) if "base" in summary else []
    if "config" in summary:
        cfg = summary["config"]
        init_from = cfg.get("optim", {}).get("init_from")
        if init_from and "base" not in summary:
            # A run that continued a checkpoint from before runs recorded their base: named, not timed.
            stages.append({"out_dir": str(Path(init_from).parent), "init_from": None, "epochs": None,
                           "train_seconds": None, "recorded": False})
        stages.append({"out_dir": cfg.get("out_dir"), "init_from": init_from or None,
                       "epochs": summary.get("epochs"), "train_seconds": summary.get("train_seconds")})
    gate = summary.get("music_gate")
    if gate:
        stages.append({"out_dir": gate["config"].get("out_dir"), "init_from": gate.get("base_checkpoint"),
                       "epochs": gate.get("epochs"), "train_seconds": gate.get("train_seconds")})
    return stages


def describe_data(summary: dict) -> dict:
    """Corpus and room-bank facts for the card, read from the manifests the run trained on (if present)."""
    data = summary.get("config", {}).get("data", {})
    corpus, rooms = Path(data.get("corpus", "")), Path(data.get("rooms", ""))
    out: dict = {}
    manifest = corpus / "manifest.jsonl"
    if manifest.is_file():
        clips = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
        hours: dict = {}
        voices: dict = {}
        for c in clips:
            key = f"{c['split']}_{c['kind']}"
            hours[key] = round(hours.get(key, 0.0) + c["seconds"] / 3600, 3)
            if c["kind"] == "speech":
                voices.setdefault(c["split"], set()).add(f"{c['source']}:{c['voice'].split('+')[0]}")
        out["corpus_hours"] = hours
        out["voices"] = {k: sorted(v) for k, v in voices.items()}
        versions = corpus / "versions.json"
        if versions.is_file():
            out["corpus_build"] = json.loads(versions.read_text())  # seed, config, Debian versions
    bank = rooms / "rooms.jsonl"
    if bank.is_file():
        recs = [json.loads(line) for line in bank.read_text().splitlines() if line.strip()]
        rt = [r["rt60"] for r in recs]
        out["rooms"] = {
            "count": {sp: sum(r["split"] == sp for r in recs) for sp in ("train", "val", "test")},
            "rt60_s": [round(min(rt), 2), round(max(rt), 2)],
            "simulator": "pyroomacoustics (image source + hybrid ray tracing), per-band absorption",
        }
    return out


# Seconds of digital silence that lead to the rest state every stream starts from. Long: the LSTM has
# cells that count time in silence; after minutes they sit deep in tanh saturation, so more silence
# (a live stream idles before the talker starts) no longer changes the output (docs/model.md,
# "Start state").
REST_STATE_SECONDS = 300.0


def known_limits(cfg: ModelConfig, noise_floor: dict | None = None, targets: list[dict] | None = None) -> list[str]:
    """The card's ``known_limits``: what the recipe implies, what the model was measured to do on a
    noise floor (``noise_floor``: the card's ``noise_floor_pass_share``), and every target an evaluation
    did not meet (``targets``: its rows ``{"target", "value", "bar", "met"}``), with its number. Export
    writes the first kind; the release step (``export.card``) adds the measured ones."""
    limits = [
        "Trained on synthetic speech (Debian TTS voices) and simulated rooms (pyroomacoustics); real voices "
        "and real rooms are not in the training data.",
        f"Runs at {cfg.sample_rate} Hz: at higher stream rates the band above the model's goes around it "
        "(the runtime's high-band path), scaled by one gain per hop from the model's top band: no frequency "
        "resolution there.",
        "Content below about 2 Hz (a DC offset) is removed before the model (the runtime's DC blocker)"
        + ("; where the model passes its input through (music), the runtime adds it back." if cfg.music_gate else "."),
    ]
    if cfg.music_gate:
        limits.append("Music is recognised and passed through unchanged, not dereverberated; speech over loud "
                      "background music is partly passed through too.")
        if cfg.music_start_open and cfg.music_hold_seconds > 0:
            limits.append(f"A stream passes its input through until {cfg.music_clear_frames} frames in a row are "
                          f"surely speech: speech waits {cfg.music_clear_frames - 1} hops after silence or music.")
    shares = [r["end_share"] for r in (noise_floor or {}).values()]
    if shares and max(shares) > 0.05:
        limits.append(f"A noise floor before the first sound (a live microphone idling, a recording's lead-in) is "
                      f"partly passed through, not suppressed: after 20 s of white, pink or brown noise at -80 or "
                      f"-60 dBFS from the rest state, {min(shares):.0%} to {max(shares):.0%} of it "
                      f"(noise_floor_pass_share).")
    for row in targets or []:
        if row["met"] is False:
            limits.append(f"Target not met on the held-out test set: {row['target']} = {row['value']:+.3f} "
                          f"(bar {row['bar']}).")
    return limits


def build_card(model: MaskLSTM, ckpt: dict, name: str, rest_seconds: float = REST_STATE_SECONDS) -> dict:
    """The contract card: what the graph takes, holds and gives, and how it was trained. No measured
    quality (``metrics`` is empty until the release step, ``export.card``, fills it)."""
    import onnx
    import onnxruntime

    cfg = model.cfg
    summary = ckpt.get("summary", {})
    stages = training_stages(summary)
    return {
        "format": CARD_FORMAT,
        "name": name,
        "version": ckpt.get("version", "0.1.0"),
        "architecture": (f"STFT complex-mask LSTM (sqrt-Hann {cfg.win}/{cfg.hop}, "
                         f"{cfg.layers} x {cfg.hidden} LSTM, input projection {cfg.input_proj}"
                         + (", music gate" if cfg.music_gate else "")
                         + (f", per-bin RLS late-reverb predictor ({cfg.rls_taps} taps, delay {cfg.rls_delay} hops, "
                            f"forgetting {cfg.rls_lam:g}, delta {cfg.rls_delta:g}, settling {cfg.rls_settle} hops, "
                            f"bins up to {cfg.rls_f_max:g} Hz, target {cfg.rls_target})" if cfg.rls_taps else "")
                         + ")"),
        "sample_rate": cfg.sample_rate,
        "hop": cfg.hop,
        "window": cfg.win,
        "latency_samples": cfg.step_latency,
        # Streams start from the state this much digital silence leads to (stream.model.StepModel.initial_state).
        "rest_state_seconds": float(rest_seconds),
        "algorithmic_latency_samples": cfg.step_latency + cfg.hop - 1,
        "algorithmic_latency_ms": round(1000 * (cfg.step_latency + cfg.hop - 1) / cfg.sample_rate, 3),
        "inputs": {"audio": {"shape": ["channels", "samples"], "dtype": "float32", "note": "samples = n * hop"}},
        "states": state_shapes(model),
        **({"outputs": {PASS_SHARE: {
            "shape": ["channels", "hops"], "dtype": "float32",
            "note": "per hop, 0..1: how much of the hop the model passes through unchanged (its music gate)"}}}
           if cfg.music_gate else {}),
        "model_config": cfg.to_dict(),
        # Settings changed at export (python -m export --set model.KEY=VALUE) from the checkpoint's own.
        **({"export_overrides": ckpt["export_overrides"]} if "export_overrides" in ckpt else {}),
        "parameters": count_parameters(model),
        "macs_per_second": macs_per_hop(cfg) * cfg.sample_rate // cfg.hop,
        "training": {**summary, "data": describe_data(summary), "stages": stages,
                     # Time to each stage's kept checkpoint, over the stages whose summaries were recorded.
                     "train_seconds_total": round(sum(st["train_seconds"] or 0.0 for st in stages), 1)},
        "metrics": {},
        "known_limits": known_limits(cfg),
        "software": {
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "opset": OPSET,
            "python": platform.python_version(),
        },
    }


def attach_card(onnx_path: Path, card: dict) -> None:
    import onnx

    proto = onnx.load(str(onnx_path))
    del proto.metadata_props[:]
    for key, value in {
        "dereverb.card": json.dumps(card, sort_keys=True),
        "dereverb.sample_rate": str(card["sample_rate"]),
        "dereverb.hop": str(card["hop"]),
        "dereverb.latency_samples": str(card["latency_samples"]),
    }.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "dereverb.export"
    onnx.save(proto, str(onnx_path))


def parity(model: MaskLSTM, onnx_path: Path, seconds: float = 2.0, channels: int = 2, seed: int = 0) -> float:
    """Max |torch - onnxruntime| of the audio output (and of ``pass_share``, a share in 0..1, where the
    graph has it), on random audio streamed in uneven hop counts.

    State tensors are compared relative to their size (an LSTM cell state may legitimately reach
    tens, where float32 rounding alone exceeds 1e-4 absolute); a relative state error above 1e-3
    raises, since it would show up in the audio of a longer stream.
    """
    import onnxruntime as ort

    cfg = model.cfg
    rng = np.random.default_rng(seed)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    hops = int(seconds * cfg.sample_rate / cfg.hop)
    audio = (rng.standard_normal((channels, hops * cfg.hop)) * 0.1).astype(np.float32)
    t_state = model.initial_state(channels)
    o_state = {k: v.numpy() for k, v in t_state.items()}
    names = model.state_names
    worst, start = 0.0, 0
    for n in _uneven_splits(hops, rng):
        chunk = audio[:, start * cfg.hop : (start + n) * cfg.hop]
        start += n
        with torch.no_grad():
            t_out = model.step(torch.from_numpy(chunk), t_state)
        o_out = session.run(output_names(model), {"audio": chunk, **o_state})
        worst = max(worst, float(np.abs(o_out[0] - t_out.audio.numpy()).max()))
        if cfg.music_gate:
            worst = max(worst, float(np.abs(o_out[-1] - t_out.pass_share.numpy()).max()))
            o_out = o_out[:-1]
        for a, b in zip(o_out[1:], (t_out.state[k] for k in names)):
            rel = float(np.abs(a - b.numpy()).max() / max(1.0, float(np.abs(b.numpy()).max())))
            if rel > 1e-3:
                raise RuntimeError(f"torch vs ONNX state mismatch: relative error {rel:.2e}")
        t_state = t_out.state
        o_state = dict(zip(names, o_out[1:]))
    return worst


def _uneven_splits(total: int, rng: np.random.Generator) -> list[int]:
    sizes, left = [], total
    while left:
        n = int(min(left, rng.integers(1, 9)))
        sizes.append(n)
        left -= n
    return sizes


def export_checkpoint(checkpoint: Path, out: Path, name: str | None = None,
                      rest_seconds: float = REST_STATE_SECONDS, overrides: dict | None = None) -> dict:
    """Export, attach the card, check parity; write atomically. Returns the card. ``overrides``: see
    ``training.model.load_checkpoint``; the .pt written beside the model carries the overridden config."""
    model, ckpt = load_checkpoint(checkpoint, overrides)
    name = name or out.stem
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(suffix=".onnx", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        export_onnx(model, tmp)
        card = build_card(model, ckpt, name, rest_seconds)
        attach_card(tmp, card)
        err = parity(model, tmp)
        if err > 1e-4:
            raise RuntimeError(f"torch vs ONNX parity {err:.2e} exceeds 1e-4")
        card["export_parity_max_abs"] = err
        # The card has no rest_state yet, so the runtime's loader computes it from rest_state_seconds on
        # the exported graph; store that exact state, so every later load gets it for free.
        rest = StepModel.load(tmp).initial_state(1)
        for state_name, value in rest_overrides(model.cfg).items():  # as MaskLSTM.rest_state
            rest[state_name] = np.full_like(rest[state_name], value)
        card["rest_state"] = {k: v.tolist() for k, v in rest.items()}
        attach_card(tmp, card)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a shipped model is world-readable
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    out.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    # The weights alone (no optimizer state) beside the ONNX: the torch side of the shipped pair,
    # for parity tests and fine-tuning; loadable with torch.load(weights_only=True).
    weights = {k: ckpt[k] for k in ("model_config", "model", "summary", "export_overrides") if k in ckpt}
    torch.save(weights, out.with_suffix(".pt"))
    return card


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="output .onnx (card written beside it)")
    parser.add_argument("--name", help="model name for the card (default: the file stem)")
    parser.add_argument("--rest-seconds", type=float, default=REST_STATE_SECONDS,
                        help="seconds of silence that lead to the start state stored in the card (default %(default)s)")
    parser.add_argument("--set", action="append", default=[], metavar="model.KEY=VALUE",
                        help="change a model setting that carries no weights (TOML literal), e.g. "
                             "--set model.music_clear_frames=3; recorded in the card")
    args = parser.parse_args(argv)
    try:
        overrides = parse_model_sets(args.set)
    except ValueError as exc:
        parser.error(str(exc))
    card = export_checkpoint(args.checkpoint, args.out, args.name, args.rest_seconds, overrides)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB), parity {card['export_parity_max_abs']:.2e}")
    return 0
