"""Full-band test material at a stream rate above the model's (44.1/48 kHz), and the band split that scores it.

Usage::

    python -m training.fullband corpus --out /work/data/corpus-test-48k [--rate 48000] [--hours 4] [--seed 1]
    python -m training.fullband rooms --bank /work/data/rooms --out /work/data/rooms-test-48k \\
        [--rate 48000] [--per-bin 8]

``corpus`` renders the test split of the corpus recipe (``training.data``, ``--hours 4 --seed 1``) at
``--rate``: the same plan, voices, texts, compositions and seeds, only ``CorpusConfig.sample_rate``
differs. Nothing in the builder low-passes at the model's Nyquist frequency: TTS audio is resampled
(soxr) from its voice's native rate to ``--rate``, and fluidsynth renders music at ``--rate`` itself.
So music has content up to 20 kHz and more, but speech only up to its voice's Nyquist frequency (times
the clip's speed perturbation): espeak-ng speaks at 22.05 kHz (content up to about 11 kHz), festival's
diphone voices and flite at 16 kHz (nothing above 8.6 kHz).

``rooms`` re-simulates a subset of a room bank's test rooms at ``--rate``: each room's spec is drawn
again from the bank's seed and the room's index (:func:`spec_of`, checked against the recorded
geometry) and simulated as the bank's builder does (pyroomacoustics, air absorption on, the same RT60
correction, truncation and normalisation), so the high band decays faster than the low, as in real
rooms. ``--per-bin`` rooms of each of the evaluation's RT60 bins are taken, in id order.

The band split (:func:`split_bands`) is a linear-phase FIR crossover applied with zero phase: the low
band and its complement sum back to the signal exactly, and the same filter applied to an output, its
input and its reference keeps them aligned.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

CROSSOVER_HZ = 8000.0  # the model's Nyquist frequency at 16 kHz
HIGH_TOP_HZ = 20000.0  # top of the scored high band
CROSSOVER_TAPS = 511  # odd: a type-I linear-phase filter with an integer delay


# --------------------------------------------------------------------------- band split


def lowpass_taps(rate: int, cutoff: float = CROSSOVER_HZ, taps: int = CROSSOVER_TAPS) -> np.ndarray:
    """Symmetric (linear-phase) low-pass FIR [taps] at ``rate`` Hz with its -6 dB point at ``cutoff`` Hz
    (Kaiser window for 80 dB stop-band attenuation: 511 taps at 48 kHz give a transition about 0.5 kHz
    wide, centred on ``cutoff``)."""
    from scipy.signal import firwin, kaiser_beta

    if taps % 2 == 0:
        raise ValueError("taps must be odd (type-I linear phase)")
    return firwin(taps, cutoff, window=("kaiser", kaiser_beta(80.0)), fs=rate)


def _zero_phase(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """``x`` [n] filtered by the symmetric FIR ``h`` [taps] and advanced by its delay: float64 [n]."""
    from scipy.signal import fftconvolve

    d = (len(h) - 1) // 2
    return fftconvolve(np.asarray(x, np.float64), h)[d:d + len(x)]


def split_bands(x: np.ndarray, rate: int, cutoff: float = CROSSOVER_HZ, top: float = HIGH_TOP_HZ
                ) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) bands of ``x`` [n] at ``rate`` Hz, float64 [n] each.

    ``low`` is ``x`` through a zero-phase linear-phase low-pass at ``cutoff``; ``high`` is the
    complement ``x - low`` limited to below ``top`` by a second zero-phase low-pass (the band above
    ``top`` is left out of both). With ``top`` at or above the Nyquist frequency, ``low + high == x``."""
    low = _zero_phase(x, lowpass_taps(rate, cutoff))
    rest = np.asarray(x, np.float64) - low
    high = rest if top >= rate / 2 else _zero_phase(rest, lowpass_taps(rate, top))
    return low, high


# --------------------------------------------------------------------------- test corpus


def build_test_corpus(out: str, rate: int, hours: float = 4.0, seed: int = 1, split: str = "test",
                      log: Any = print) -> list[dict]:
    """Render ``split``'s clips of the corpus recipe at ``rate`` into ``out`` (as ``training.data`` lays a
    corpus out, with ``manifest.jsonl`` and ``versions.json``); returns the manifest records."""
    from training import data

    cfg = dataclasses.replace(data.CorpusConfig(), sample_rate=rate)
    data.check_tools(cfg=cfg)
    out_p = Path(out)
    out_p.mkdir(parents=True, exist_ok=True)
    plans = [p for p in data.plan_corpus(hours, seed, str(out_p), cfg, data.voice_bank()) if p.split == split]
    sentences = data.load_sentences()
    records = []
    for k, plan in enumerate(plans, 1):
        records.append(data.build_clip(plan, cfg, sentences))
        if k % 20 == 0 or k == len(plans):
            log(f"  {k}/{len(plans)} clips")
    with open(out_p / "manifest.jsonl", "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, sort_keys=True) + "\n")
    versions = {"debian": data.debian_versions(), "seed": seed, "hours": hours, "split": split,
                "config": dataclasses.asdict(cfg)}
    (out_p / "versions.json").write_text(json.dumps(versions, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return records


# --------------------------------------------------------------------------- rooms


def spec_of(record: dict, seed: int, cfg: Any) -> Any:
    """The :class:`training.rooms.RoomSpec` a bank built with ``seed`` and ``cfg`` drew for ``record`` (a
    ``rooms.jsonl`` line of a simulated room): the draw of :func:`training.rooms.build_room` for the
    room's index and recorded attempt. Raises ValueError if its geometry differs from the record's."""
    from training import rooms

    index, attempt = int(record["id"].removeprefix("room")), int(record.get("attempt", 0))
    rng = np.random.default_rng([seed, index] if attempt == 0 else [seed, index, attempt])
    spec = rooms.draw_room(rng, cfg, None if attempt == 0 else float(record["rt60_target"]))
    same = (np.allclose(spec.dims, record["room_dims"], atol=1e-3)
            and np.allclose(spec.mic, record["mic"], atol=1e-3) and np.allclose(spec.src, record["src"], atol=1e-3))
    if not same:
        raise ValueError(f"{record['id']}: the redrawn spec does not match the recorded room")
    return spec


def simulate_room(spec: Any, cfg: Any) -> tuple[np.ndarray, dict]:
    """Simulate ``spec`` at ``cfg.sample_rate`` as the bank's builder does: RT60 correction, truncation,
    peak normalisation. Returns (rir float64 [m], {"rt60", "drr_db", "direct_index", "method",
    "max_order", "sim_seconds"})."""
    from training import rooms
    from training.mixing import find_direct_index

    t0 = time.perf_counter()
    rir, sim, rt60, _ = rooms.simulate_to_target(spec, cfg)
    rir = rooms.truncate_rir(rir, cfg.sample_rate, rt60)
    rir = rir / np.max(np.abs(rir))
    return rir, {"rt60": round(float(rooms.measure_rt60(rir, cfg.sample_rate)), 4),
                 "drr_db": round(rooms.measure_drr(rir, cfg.sample_rate), 3),
                 "direct_index": int(find_direct_index(rir, cfg.sample_rate)), "method": sim["method"],
                 "max_order": sim["max_order"], "sim_seconds": round(time.perf_counter() - t0, 3)}


def pick_rooms(records: Sequence[dict], split: str, per_bin: int) -> list[dict]:
    """``per_bin`` simulated rooms of ``split`` from each RT60 bin of the evaluation, in id order."""
    from training.evaluate import RT60_BINS, rt60_bin

    sim = sorted((r for r in records if r.get("split") == split and r.get("source") == "pra"), key=lambda r: r["id"])
    return [r for name, _, _ in RT60_BINS for r in [r for r in sim if rt60_bin(float(r["rt60"])) == name][:per_bin]]


def resimulate_rooms(bank: str, out: str, rate: int, per_bin: int = 8, split: str = "test",
                     log: Any = print) -> list[dict]:
    """Re-simulate :func:`pick_rooms` of the room bank ``bank`` at ``rate`` into ``out`` (``rooms.jsonl``
    and ``<split>/<id>.wav``, as the bank). A record keeps the bank's fields and gets the new ``rt60``,
    ``drr_db``, ``direct_index``, ``samples``, ``sim_seconds``, ``method``/``max_order`` and the bank's
    ``rt60_16k`` for comparison. Returns the records."""
    from training import rooms

    bank_p, out_p = Path(bank), Path(out)
    meta = json.loads((bank_p / "config.json").read_text(encoding="utf-8"))
    known = {f.name for f in dataclasses.fields(rooms.RoomConfig)}
    conf = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["config"].items() if k in known}
    cfg = dataclasses.replace(rooms.RoomConfig(**conf), sample_rate=rate)
    with open(bank_p / "rooms.jsonl", encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    out_recs = []
    for rec in pick_rooms(records, split, per_bin):
        spec = spec_of(rec, int(meta["seed"]), cfg)
        rir, info = simulate_room(spec, cfg)
        path = out_p / rec["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        rooms.write_wav(path, rir, rate)
        out_recs.append({**rec, **info, "rt60_16k": rec["rt60"], "samples": int(len(rir)), "sample_rate": rate})
        log(f"  {rec['id']}: rt60 {rec['rt60']:.3f} s at 16 kHz -> {info['rt60']:.3f} s at {rate} Hz "
            f"({info['sim_seconds']:.1f} s)")
    with open(out_p / "rooms.jsonl", "w", encoding="utf-8") as f:
        for r in out_recs:
            f.write(json.dumps(r, sort_keys=True) + "\n")
    (out_p / "config.json").write_text(json.dumps({"config": dataclasses.asdict(cfg), "seed": meta["seed"],
                                                   "bank": str(bank_p), "per_bin": per_bin}, indent=2) + "\n",
                                       encoding="utf-8")
    return out_recs


# --------------------------------------------------------------------------- evaluation at the stream rate

# A dry reference has a high band when its energy at HB_CONTENT_FROM_HZ-20 kHz is no more than -HB_CONTENT_DB dB
# below its whole energy. Detected from 9 kHz, not 8: the 16 kHz voices, sped up by the corpus's speed
# perturbation, reach 8.6 kHz, a sliver just above the crossover that is no high band to score.
HB_CONTENT_DB = -50.0
HB_CONTENT_FROM_HZ = 9000.0
TAIL_FRAME_S = 0.02
TAIL_QUIET_DB = 30.0  # a tail frame: the direct path this far below its loud frames (95th percentile)...
TAIL_ACTIVE_DB = 20.0  # ...within TAIL_AFTER_S of a frame of speech (direct path within this of the loud frames)
TAIL_AFTER_S = 0.5
FULLBAND_SYSTEMS = ("unprocessed", "ours")
HIGH_GROUP = "reverb with high band"


def energy(x: np.ndarray) -> float:
    """Sum of squares of ``x``, float64."""
    return float(np.sum(np.square(np.asarray(x, np.float64))))


def db_ratio(a: float, b: float) -> float:
    """10 log10(a / b), with tiny floors (an empty band gives a large negative number, not NaN)."""
    return float(10.0 * np.log10((a + 1e-30) / (b + 1e-30)))


def high_band_share_db(x: np.ndarray, rate: int, lo: float = HB_CONTENT_FROM_HZ,
                       hi: float = HIGH_TOP_HZ) -> float:
    """Energy of ``x`` [n] at ``lo``..``hi`` Hz (its spectrum's bins there) relative to its whole energy, dB."""
    spec = np.abs(np.fft.rfft(np.asarray(x, np.float64))) ** 2
    f = np.fft.rfftfreq(len(x), 1 / rate)
    return db_ratio(float(spec[(f >= lo) & (f < hi)].sum()), float(spec.sum()))


def _frame_energies(x: np.ndarray, rate: int) -> np.ndarray:
    """Energy of each whole TAIL_FRAME_S frame of ``x`` [n], float64 [n // frame]."""
    n = int(round(TAIL_FRAME_S * rate))
    m = len(x) // n
    return np.sum(np.square(np.asarray(x[: m * n], np.float64)).reshape(m, n), axis=1)


def _quiet(e: np.ndarray) -> np.ndarray:
    """Frames at least TAIL_QUIET_DB below the loud ones (95th percentile of the frame energies ``e``)."""
    return e < np.percentile(e, 95) * 10 ** (-TAIL_QUIET_DB / 10)


def tail_frames(direct: np.ndarray, rate: int, band: np.ndarray | None = None) -> np.ndarray:
    """[n // frame] bool: the 20 ms frames just after speech offsets, from the dry (direct-path) signal's
    envelope: frames at least TAIL_QUIET_DB below its loud frames (95th percentile of the frame energies)
    that start within TAIL_AFTER_S of the end of a speech frame (within TAIL_ACTIVE_DB of the loud ones).
    With ``band`` (the direct path's band to score, [n]), also TAIL_QUIET_DB below that band's loud frames:
    a quiet fricative is no tail of the band it sounds in. What the input has there is the room's tail
    (and the noise floor)."""
    e = _frame_energies(direct, rate)
    m = len(e)
    if m == 0:
        return np.zeros(0, bool)
    active = e > np.percentile(e, 95) * 10 ** (-TAIL_ACTIVE_DB / 10)
    k = int(round(TAIL_AFTER_S / TAIL_FRAME_S))
    recent = np.convolve(active.astype(float), np.ones(k), mode="full")[:m]  # active frames in [t - k + 1, t]
    after = np.concatenate([[0.0], recent[:-1]]) > 0  # ... in [t - k, t - 1]
    frames = _quiet(e) & after
    return frames if band is None else frames & _quiet(_frame_energies(band, rate))


def tail_drop_db(x: np.ndarray, y: np.ndarray, frames: np.ndarray, rate: int) -> float | None:
    """How far the energy of input ``x`` in the tail ``frames`` (:func:`tail_frames`) falls in output ``y``
    (both [n], one band), dB (positive: the output's tail is quieter); None without tail frames."""
    n = int(round(TAIL_FRAME_S * rate))
    m = len(frames)
    if not frames.any():
        return None
    ex = np.sum(np.square(np.asarray(x[: m * n], np.float64)).reshape(m, n), axis=1)[frames].sum()
    ey = np.sum(np.square(np.asarray(y[: m * n], np.float64)).reshape(m, n), axis=1)[frames].sum()
    return db_ratio(ex, ey)


def band_scores(kind: str, y: np.ndarray, x: np.ndarray, early: np.ndarray, direct: np.ndarray, rate: int,
                with_high: bool, tails: tuple[np.ndarray, np.ndarray] | None = None
                ) -> dict[str, float | None]:
    """The per-band scores of one system's output ``y`` for input ``x`` (all float [n] at ``rate``, aligned).

    reverb/music: SI-SDR against ``early`` (early-50) and ``direct`` in the whole band, against early-50
    below 8 kHz (``si_sdr_early_low``) and, if ``with_high``, at 8-20 kHz (``si_sdr_early_high``); for
    reverb also the tail drop (:func:`tail_drop_db`, input -> output) below 8 kHz and at 8-20 kHz, each over
    its band's ``tails`` (:func:`tail_frames`, low then high). dry: SI-SDR against the input, whole and per
    band, and the output's 8-20 kHz energy relative to the input's (``high_energy_db``). The bands:
    :func:`split_bands`, the same filter on every signal."""
    from training.metrics import si_sdr

    y_lo, y_hi = split_bands(y, rate)
    r: dict[str, float | None] = {}
    if kind == "dry":
        x_lo, x_hi = split_bands(x, rate)
        r["si_sdr_input"] = si_sdr(y, x)
        r["si_sdr_input_low"] = si_sdr(y_lo, x_lo)
        if with_high:
            r["si_sdr_input_high"] = si_sdr(y_hi, x_hi)
            r["high_energy_db"] = db_ratio(energy(y_hi), energy(x_hi))
        return r
    e_lo, e_hi = split_bands(early, rate)
    r["si_sdr_early"] = si_sdr(y, early)
    r["si_sdr_direct"] = si_sdr(y, direct)
    r["si_sdr_early_low"] = si_sdr(y_lo, e_lo)
    if with_high:
        r["si_sdr_early_high"] = si_sdr(y_hi, e_hi)
    if kind == "reverb" and tails is not None:
        x_lo, x_hi = split_bands(x, rate)
        r["tail_drop_low"] = tail_drop_db(x_lo, y_lo, tails[0], rate)
        if with_high:
            r["tail_drop_high"] = tail_drop_db(x_hi, y_hi, tails[1], rate)
    return r


def paired_deltas(systems: dict[str, dict[str, Any]]) -> None:
    """Add ``d_<key>`` = system minus ``unprocessed`` for the SI-SDR, PESQ and ESTOI keys, in place."""
    base = systems["unprocessed"]
    for r in systems.values():
        for key in [k for k in base if k.startswith(("si_sdr_early", "si_sdr_direct", "pesq", "estoi"))]:
            if r.get(key) is not None and base[key] is not None:
                r["d_" + key] = r[key] - base[key]


def score_signals(systems: dict[str, Any], kind: str, x: np.ndarray, early: np.ndarray, direct: np.ndarray,
                  rate: int, speech_metrics: bool = True, high_share_db: float | None = None) -> dict[str, Any]:
    """Run every system (name -> function float32 [n] -> [n]) on input ``x`` and score it (:func:`band_scores`;
    with ``speech_metrics``, PESQ-WB and ESTOI at 16 kHz of reverberant/dry speech, on the output and
    reference resampled to 16 kHz). Returns ``{"high_share_db", "with_high", "tail_frames", "systems":
    {name: scores, proc_seconds, d_*}}``; ``with_high``: the dry reference (``direct``) has a high band
    (:func:`high_band_share_db` at least HB_CONTENT_DB), or ``high_share_db`` if given: the share of the dry
    clip itself, before the mixing's microphone EQ, which can lift a 16-bit clip's quantisation floor at
    9-20 kHz by 20 dB and more relative to a band it cuts."""
    from training import metrics as m

    share = high_band_share_db(direct, rate) if high_share_db is None else high_share_db
    with_high = share >= HB_CONTENT_DB
    tails = None
    if kind == "reverb":
        d_lo, d_hi = split_bands(direct, rate)
        tails = (tail_frames(direct, rate, d_lo), tail_frames(direct, rate, d_hi))
    ref16 = m._to_16k(np.asarray(early if kind != "dry" else x, np.float64), rate) if speech_metrics else None
    out: dict[str, Any] = {"high_share_db": share, "with_high": bool(with_high),
                           "tail_frames": None if tails is None else [int(t.sum()) for t in tails], "systems": {}}
    for name, fn in systems.items():
        t0 = time.perf_counter()
        y = np.asarray(fn(x), dtype=np.float32)
        proc = time.perf_counter() - t0
        if y.shape != x.shape or not np.all(np.isfinite(y)):
            raise RuntimeError(f"{name} returned a bad output (shape {y.shape} for {x.shape})")
        r: dict[str, Any] = {"proc_seconds": proc, **band_scores(kind, y, x, early, direct, rate, with_high, tails)}
        if speech_metrics and kind in ("reverb", "dry"):
            y16 = m._to_16k(np.asarray(y, np.float64), rate)
            r["pesq"] = m.pesq_wb(ref16, y16, 16000)
            r["estoi"] = m.estoi(ref16, y16, 16000)
        out["systems"][name] = r
    paired_deltas(out["systems"])
    return out


def _systems(model: str | None, rate: int) -> dict[str, Any]:
    """unprocessed (identity) and, with ``model``, ours: the ONNX model through ``stream.dereverb_array`` at
    ``rate`` (the runtime's resamplers and its high band), or the identity for ``passthrough``."""
    from training.evaluate import PASSTHROUGH

    systems: dict[str, Any] = {"unprocessed": lambda x: x}
    if model == PASSTHROUGH:
        systems["ours"] = lambda x: x.copy()
    elif model:
        import stream
        from stream.model import StepModel

        step = StepModel.load(model)
        systems["ours"] = lambda x: np.asarray(stream.dereverb_array(x, rate, model=step), np.float32)
    return systems


def evaluate_at_rate(cfg: Any, rate: int, log: Any = print) -> dict[str, Any]:
    """The evaluation of ``cfg`` (a :class:`training.evaluate.EvalConfig` whose corpus and rooms are at
    ``rate``) at the stream rate ``rate``: the same test-set plan and mixing as at 16 kHz, scored per band.

    The systems are the input and the model only (the WPE baselines and DNSMOS are 16 kHz tools; the warm
    streams are the 16 kHz evaluation's). One process, one thread. Returns the result dict: config,
    per-example records, :func:`aggregate_at_rate` summary, target rows, timing."""
    from training import evaluate as ev

    if cfg.warmup > 0:
        raise ValueError("the evaluation at a stream rate scores cold starts only (--warmup 0)")
    t0 = time.perf_counter()
    specs = ev.plan_examples(cfg)
    systems = _systems(cfg.model, rate)
    records = []
    for k, spec in enumerate(specs, 1):
        ex = ev.build_example(spec, cfg.seconds, 0.0, rate)
        x = ex["input"]
        start = int(ex["info"]["crop_start"])
        share = high_band_share_db(ev._read_audio(spec.clip_path, rate)[start:start + len(x)], rate)
        res = score_signals(systems, spec.kind, x, ex["early"], ex["direct"], rate, high_share_db=share)
        records.append({"index": spec.index, "kind": spec.kind, "clip": spec.clip_id, "voice": spec.voice,
                        "room": spec.room_id, "rt60": spec.rt60,
                        "bin": spec.kind if spec.kind != "reverb" else ev.rt60_bin(float(spec.rt60)),
                        "seconds": len(x) / rate, "mix": {k: v for k, v in ex["info"].items()
                                                          if isinstance(v, (int, float, str, bool))}, **res})
        if k % 5 == 0 or k == len(specs):
            log(f"  {k}/{len(specs)} examples")
    summary = aggregate_at_rate(records)
    wall = time.perf_counter() - t0
    audio = sum(r["seconds"] for r in records)
    return ev._jsonable({
        "config": {**dataclasses.asdict(cfg), "rate": rate, "hb_content_db": HB_CONTENT_DB,
                   "hb_content_from_hz": HB_CONTENT_FROM_HZ, "crossover_hz": CROSSOVER_HZ,
                   "high_top_hz": HIGH_TOP_HZ, "crossover_taps": CROSSOVER_TAPS},
        "test_set": {"manifest_sha256": ev._sha256(Path(cfg.corpus) / "manifest.jsonl"),
                     "rooms_sha256": ev._sha256(Path(cfg.rooms) / "rooms.jsonl"),
                     "model_sha256": (ev._sha256(Path(cfg.model)) if cfg.model and cfg.model != ev.PASSTHROUGH
                                      else None)},
        "summary": summary,
        "targets": check_targets_at_rate(summary),
        "timing": {"wall_seconds": wall, "examples": len(records), "audio_seconds": audio,
                   "rtf": {s: sum(r["systems"][s]["proc_seconds"] for r in records) / audio for s in systems}},
        "examples": records,
    })


def aggregate_at_rate(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Means per group and system, ``{group: {system: {"n", "n_high", metric: mean}}}``. Groups: the RT60
    bins, ``all_reverb`` (reverberant speech) and HIGH_GROUP (its examples with a high band: the bands are
    compared on the same examples there), ``dry``, ``music``. A high-band metric is averaged over
    the group's examples whose dry reference has a high band (``n_high`` of them); the others over all."""
    from training import evaluate as ev

    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(r["bin"], []).append(r)
        if r["kind"] == "reverb":
            groups.setdefault("all_reverb", []).append(r)
            if r["with_high"]:
                groups.setdefault(HIGH_GROUP, []).append(r)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for g in [b for b, _, _ in ev.RT60_BINS] + ["all_reverb", HIGH_GROUP, "dry", "music"]:
        recs = groups.get(g, [])
        if not recs:
            continue
        out[g] = {}
        for s in [s for s in FULLBAND_SYSTEMS if s in recs[0]["systems"]]:
            keys = sorted({k for r in recs for k in r["systems"][s]})
            row: dict[str, Any] = {"n": len(recs), "n_high": sum(r["with_high"] for r in recs)}
            for k in keys:
                row[k] = ev._mean([r["systems"][s].get(k) for r in recs])
            row["high_share_db"] = ev._mean([r["high_share_db"] for r in recs if r["with_high"]])
            out[g][s] = row
    return out


def check_targets_at_rate(summary: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The full-band targets against an :func:`aggregate_at_rate` summary (rows as
    :func:`training.evaluate.check_targets`): the high band's dSI-SDR against early-50 at least the low
    band's minus 1 dB, the tail falling at least as much at 8-20 kHz as below 8 kHz (reverberant speech);
    the dry high band's energy within 1 dB of the input's and its SI-SDR at least 20 dB; music through the
    rooms at least -0.5 dB against early-50 (the 16 kHz evaluation's bar). The reverberant targets
    compare the bands on the same examples (HIGH_GROUP)."""
    def get(group: str, key: str) -> float | None:
        return summary.get(group, {}).get("ours", {}).get(key)

    rows: list[dict[str, Any]] = []

    def add(target: str, value: float | None, ok: Any, bar: str) -> None:
        rows.append({"target": target, "value": value, "bar": bar, "met": None if value is None else bool(ok(value))})

    lo, hi = get(HIGH_GROUP, "d_si_sdr_early_low"), get(HIGH_GROUP, "d_si_sdr_early_high")
    add("reverb: dSI-SDR early 8-20 kHz minus (< 8 kHz minus 1 dB)",
        None if lo is None or hi is None else hi - (lo - 1), lambda v: v >= 0, ">= 0")
    tl, th = get(HIGH_GROUP, "tail_drop_low"), get(HIGH_GROUP, "tail_drop_high")
    add("reverb: tail drop 8-20 kHz minus tail drop < 8 kHz (dB)", None if tl is None or th is None else th - tl,
        lambda v: v >= 0, ">= 0")
    add("dry: 8-20 kHz energy of output vs input (dB)", get("dry", "high_energy_db"), lambda v: abs(v) <= 1,
        "within +-1")
    add("dry: SI-SDR 8-20 kHz vs input (dB)", get("dry", "si_sdr_input_high"), lambda v: v >= 20, ">= 20")
    add("music: dSI-SDR vs early-50 (dB)", get("music", "d_si_sdr_early"), lambda v: v >= -0.5, ">= -0.50")
    return rows


def markdown_at_rate(result: dict[str, Any], title: str = "") -> str:
    """Markdown tables of :func:`evaluate_at_rate`'s result: reverberant speech, music, dry speech, targets."""
    from training.evaluate import _f

    summary, rate = result["summary"], result["config"]["rate"]
    lines = [f"### {title}", ""] if title else []
    rev = [g for g in summary if g.startswith("rt60") or g in ("all_reverb", HIGH_GROUP)]
    if rev:
        lines += [
            f"Reverberant speech at {rate} Hz: SI-SDR vs early-50 in the whole band, below 8 kHz and at 8-20 kHz "
            "(high band: the examples whose voice has one, n high); tail drop: input -> output energy in the 20 ms "
            "frames after speech offsets, per band; PESQ-WB and ESTOI at 16 kHz (output and reference resampled)",
            "",
            "| RT60 bin | system | n | n high | SI-SDR early dB | dSI-SDR early | < 8 kHz dB | d < 8 kHz | 8-20 kHz dB "
            "| d 8-20 kHz | tail drop < 8 kHz dB | tail drop 8-20 kHz dB | PESQ-WB | dPESQ | ESTOI | dESTOI |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for g in rev:
            for s, row in summary[g].items():
                tail = s != "unprocessed"
                lines.append("| " + " | ".join([
                    g, s, str(row["n"]), str(row["n_high"]), _f(row.get("si_sdr_early")),
                    _f(row.get("d_si_sdr_early"), signed=True), _f(row.get("si_sdr_early_low")),
                    _f(row.get("d_si_sdr_early_low"), signed=True), _f(row.get("si_sdr_early_high")),
                    _f(row.get("d_si_sdr_early_high"), signed=True),
                    _f(row.get("tail_drop_low"), signed=True) if tail else "-",
                    _f(row.get("tail_drop_high"), signed=True) if tail else "-",
                    _f(row.get("pesq")), _f(row.get("d_pesq"), signed=True), _f(row.get("estoi"), 3),
                    _f(row.get("d_estoi"), 3, signed=True)]) + " |")
        lines.append("")
    if "music" in summary:
        lines += [f"Music through the test rooms at {rate} Hz: SI-SDR vs early-50 per band (high band: n high clips "
                  "with one) and vs the direct path", "",
                  "| system | n | n high | SI-SDR early dB | dSI-SDR early | < 8 kHz dB | d < 8 kHz | 8-20 kHz dB "
                  "| d 8-20 kHz | SI-SDR direct dB | dSI-SDR direct |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for s, row in summary["music"].items():
            lines.append("| " + " | ".join([
                s, str(row["n"]), str(row["n_high"]), _f(row.get("si_sdr_early")),
                _f(row.get("d_si_sdr_early"), signed=True), _f(row.get("si_sdr_early_low")),
                _f(row.get("d_si_sdr_early_low"), signed=True), _f(row.get("si_sdr_early_high")),
                _f(row.get("d_si_sdr_early_high"), signed=True), _f(row.get("si_sdr_direct")),
                _f(row.get("d_si_sdr_direct"), signed=True)]) + " |")
        lines.append("")
    if "dry" in summary:
        lines += [f"Dry speech at {rate} Hz: output vs input (8-20 kHz: n high clips whose voice has a high band)", "",
                  "| system | n | n high | SI-SDR dB | < 8 kHz dB | 8-20 kHz dB | 8-20 kHz energy out/in dB "
                  "| PESQ-WB | ESTOI |", "|---|---|---|---|---|---|---|---|---|"]
        for s, row in summary["dry"].items():
            if s == "unprocessed":
                continue
            lines.append("| " + " | ".join([
                s, str(row["n"]), str(row["n_high"]), _f(row.get("si_sdr_input")), _f(row.get("si_sdr_input_low")),
                _f(row.get("si_sdr_input_high")), _f(row.get("high_energy_db"), signed=True), _f(row.get("pesq")),
                _f(row.get("estoi"), 3)]) + " |")
        lines.append("")
    lines += ["Full-band targets:", "", "| target | measured | bar | met |", "|---|---|---|---|"]
    for r in result["targets"]:
        met = "-" if r["met"] is None else ("yes" if r["met"] else "**no**")
        lines.append(f"| {r['target']} | {_f(r['value'], 2, signed=True)} | {r['bar']} | {met} |")
    t = result["timing"]
    lines += ["", f"{t['examples']} examples ({t['audio_seconds']:.0f} s of audio at {rate} Hz) in "
                  f"{t['wall_seconds']:.1f} s wall, one process; RTF (whole evaluation's processing, 1 thread): "
              + ", ".join(f"{s} {v:.4f}" for s, v in t["rtf"].items() if s != "unprocessed"), ""]
    return "\n".join(lines)


def run_at_rate(cfg: Any, rate: int, out: str | None = None, markdown: str | None = None) -> int:
    """``python -m training.evaluate --rate R``: evaluate, print the Markdown, write ``out``/``markdown``."""
    result = evaluate_at_rate(cfg, rate, log=lambda s: print(s, file=sys.stderr, flush=True))
    name = Path(cfg.model).stem if cfg.model else "input"
    md = markdown_at_rate(result, f"{name} on {cfg.split} at {rate} Hz ({len(result['examples'])} examples, "
                                  f"seed {cfg.seed}, cold start)")
    print(md)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    if markdown:
        Path(markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(markdown).write_text(md, encoding="utf-8")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.fullband", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("corpus", help="render the corpus recipe's test split at --rate")
    c.add_argument("--out", required=True)
    c.add_argument("--rate", type=int, default=48000)
    c.add_argument("--hours", type=float, default=4.0)
    c.add_argument("--seed", type=int, default=1)
    r = sub.add_parser("rooms", help="re-simulate a room bank's test rooms at --rate")
    r.add_argument("--bank", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--rate", type=int, default=48000)
    r.add_argument("--per-bin", type=int, default=8)
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    if a.cmd == "corpus":
        recs = build_test_corpus(a.out, a.rate, a.hours, a.seed)
        print(f"{len(recs)} clips in {time.perf_counter() - t0:.1f} s")
    else:
        recs = resimulate_rooms(a.bank, a.out, a.rate, a.per_bin)
        print(f"{len(recs)} rooms in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
