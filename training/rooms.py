"""Bank of room impulse responses (simulated with pyroomacoustics, plus measured ones).

Usage::

    python -m training.rooms build --count 600 --seed 1 --out /work/data/rooms [--rirs DIR] [--jobs 2]

Writes ``OUT/<split>/<id>.wav`` (16 kHz, float32, mono, peak-normalised) and
``OUT/rooms.jsonl`` (one object per RIR: id, path, split, rt60, drr_db, direct_index,
source, room dims, distance, ...; see docs/INTERFACES.md).

Simulation: the target RT60 is drawn uniformly in [0.15, 1.5] s, then a shoebox whose
volume can reach it with plausible absorption; every wall gets a material with its own
frequency-dependent absorption (octave bands 125 Hz..8 kHz) and scattering, all scaled
together so that the Eyring RT60 at 500 Hz-1 kHz matches the target. Rooms up to
``RoomConfig.ism_max_rt60`` use the image-source method only; longer ones the hybrid
ISM (low order) + ray tracing, seeded with ``pra.random.seed`` for determinism. After
simulation the absorption is corrected (at most ``max_corrections`` times) if the
*measured* RT60 misses the target by more than ``rt60_tolerance``: ray tracing's late
energy and the ISM order cap both bias the Eyring prediction. The measured RT60 (Schroeder
T20 fit) and DRR are what is recorded; a room still off by more than
``reject_tolerance`` is redrawn with the same target RT60 (see :func:`build_room`).

Splits are assigned by room index (index % 10: 0..7 train, 8 val, 9 test).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf

from .mixing import find_direct_index

SAMPLE_RATE = 16000
BAND_CENTERS = [125.0, 250.0, 500.0, 1000.0, 2000.0, 4000.0, 8000.0]
WALLS = ("east", "west", "north", "south", "floor", "ceiling")
# Typical absorption spectra (relative, 125 Hz..8 kHz). Hard surfaces absorb little and
# flatly, porous ones (carpet, curtains, ceiling tiles) mostly highs, panels (wood,
# plasterboard, windows) mostly lows; mixing them per wall gives rooms with bass-heavy or
# bright tails, as in real rooms.
ABSORPTION_PROFILES = {
    "hard": np.array([1.0, 0.9, 0.8, 0.8, 0.9, 1.0, 1.1]),
    "porous": np.array([0.15, 0.3, 0.6, 0.9, 1.0, 1.0, 1.0]),
    "panel": np.array([1.0, 0.8, 0.55, 0.4, 0.35, 0.35, 0.35]),
}
ROOM_SIZES = {  # (length, width, height) ranges in m
    "small": ((2.5, 5.0), (2.0, 4.5), (2.3, 3.0)),
    "medium": ((4.0, 10.0), (3.0, 8.0), (2.5, 4.0)),
    "large": ((8.0, 25.0), (6.0, 18.0), (3.5, 10.0)),
}


@dataclass(frozen=True)
class RoomConfig:
    """Simulation settings (seconds, metres, Hz)."""

    sample_rate: int = SAMPLE_RATE
    rt60_range: tuple[float, float] = (0.15, 1.5)
    distance_range: tuple[float, float] = (0.5, 4.0)
    wall_margin: float = 0.4  # keep source and mic this far from walls
    ism_max_rt60: float = 0.6  # above: hybrid ISM + ray tracing
    ism_order_cap: int = 100  # runtime guard for pure ISM in small live rooms
    hybrid_ism_order: int = 3
    n_rays: int = 10000
    receiver_radius: float = 0.5
    rt_energy_thres: float = 1e-7
    hist_bin_size: float = 0.004
    rt60_tolerance: float = 0.12  # relative; re-simulate with corrected absorption above
    max_corrections: int = 2
    reject_tolerance: float = 0.3  # redraw the room if still further off than this
    max_redraws: int = 3
    size_class_probs: tuple[float, float, float] = (0.4, 0.35, 0.25)  # small, medium, large
    split_by_index: tuple[str, ...] = ("train",) * 8 + ("val", "test")


@dataclass
class RoomSpec:
    """Everything needed to simulate one room (drawn from the room's rng)."""

    dims: list[float]
    rt60_target: float
    profiles: list[str]
    wall_coeffs: list[list[float]]  # [6 walls][7 bands], relative (before the global scale)
    scattering: list[float]
    mic: list[float]
    src: list[float]
    sim_seed: int
    size_class: str


# --------------------------------------------------------------------------- acoustics helpers


def schroeder_db(h: np.ndarray) -> np.ndarray:
    """Energy decay curve (backward-integrated energy) in dB re its start, [m]."""
    e = np.cumsum(np.square(h[::-1], dtype=np.float64))[::-1]
    return 10.0 * np.log10(e / max(e[0], 1e-30) + 1e-30)


def measure_rt60(h: np.ndarray, sample_rate: int = SAMPLE_RATE, start_db: float = -5.0,
                 stop_db: float = -25.0, skip_ms: float = 2.5) -> float:
    """RT60 (s) from a least-squares line on the Schroeder curve of the reverberant part
    (after the direct path +``skip_ms``) between ``start_db`` and ``stop_db`` (T20),
    extrapolated to 60 dB. The direct sound is excluded because with a high DRR it makes
    the curve drop by more than 20 dB at once and the fit would measure the direct
    path, not the room. T20 rather than T30 because ISM RIRs that stop at their maximum
    order bend down at the end of the curve."""
    d0 = find_direct_index(h, sample_rate)
    start = d0 + int(round(skip_ms * 1e-3 * sample_rate)) + 1
    tail = np.asarray(h, np.float64)[start:]
    if len(tail) < 8 or not np.any(tail):
        return float("nan")
    edc = schroeder_db(tail)
    idx = np.flatnonzero((edc <= start_db) & (edc >= stop_db))
    if len(idx) < 4:
        return float("nan")
    t = idx / sample_rate
    slope = np.polyfit(t, edc[idx], 1)[0]
    return float(-60.0 / slope) if slope < 0 else float("nan")


def measure_drr(h: np.ndarray, sample_rate: int = SAMPLE_RATE, half_ms: float = 2.5) -> float:
    """Direct-to-reverberant ratio (dB): energy within +-2.5 ms of the direct path over the
    energy of everything after that window."""
    d0 = find_direct_index(h, sample_rate)
    w = int(round(half_ms * 1e-3 * sample_rate))
    h = np.asarray(h, np.float64)
    direct = np.sum(h[max(0, d0 - w) : d0 + w + 1] ** 2)
    late = np.sum(h[d0 + w + 1 :] ** 2)
    return float(10 * np.log10(direct / max(late, 1e-30)))


def truncate_rir(h: np.ndarray, sample_rate: int, rt60: float, floor_db: float = -60.0,
                 fade_ms: float = 10.0) -> np.ndarray:
    """Cut ``h`` where its decay curve drops ``floor_db`` below the start (at most
    1.6 x rt60 after the direct path, at least 0.1 s) with a short fade: the rest is
    inaudible under any signal and only costs convolution time."""
    d0 = find_direct_index(h, sample_rate)
    edc = schroeder_db(h)
    below = np.flatnonzero(edc < floor_db)
    end = int(below[0]) if len(below) else len(h)
    if np.isfinite(rt60) and rt60 > 0:
        end = min(end, d0 + int(1.6 * rt60 * sample_rate))
    end = min(len(h), max(end, d0 + int(0.1 * sample_rate)))
    y = np.array(h[:end], np.float64)
    nf = min(int(fade_ms * 1e-3 * sample_rate), max(0, end - d0 - 1))
    if nf > 0:
        y[-nf:] *= np.cos(np.linspace(0, np.pi / 2, nf)) ** 2
    return y


def eyring_rt60(dims: Sequence[float], coeffs: np.ndarray, bands: slice = slice(2, 4)) -> float:
    """Eyring RT60 (s) of a shoebox with per-wall absorption ``coeffs`` [6, 7], averaged
    over ``bands`` (500 Hz and 1 kHz by default). Wall order follows WALLS."""
    lx, ly, lz = dims
    areas = np.array([ly * lz, ly * lz, lx * lz, lx * lz, lx * ly, lx * ly])
    v = lx * ly * lz
    a_mean = (areas[:, None] * coeffs).sum(0) / areas.sum()
    rt = 0.161 * v / (-areas.sum() * np.log(1 - np.clip(a_mean, 1e-4, 0.999)))
    return float(np.mean(rt[bands]))


def scale_for_rt60(dims: Sequence[float], rel: np.ndarray, rt60: float,
                   lo: float = 0.01, hi: float = 0.95) -> tuple[float, np.ndarray]:
    """Global factor k (bisection on log k) such that clip(k * rel) hits ``rt60``
    (Eyring, mid bands). Returns (k, absorption [6, 7])."""
    a, b = -12.0, 6.0
    for _ in range(60):
        m = 0.5 * (a + b)
        if eyring_rt60(dims, np.clip(np.exp(m) * rel, lo, hi)) > rt60:
            a = m  # too reverberant: more absorption
        else:
            b = m
    k = float(np.exp(0.5 * (a + b)))
    return k, np.clip(k * rel, lo, hi)


def write_wav(path: Path, h: np.ndarray, sample_rate: int) -> None:
    """float32 WAV without libsndfile's PEAK chunk (it carries a timestamp, which would
    break byte-identical rebuilds)."""
    from scipy.io import wavfile

    wavfile.write(str(path), sample_rate, np.asarray(h, np.float32))


# --------------------------------------------------------------------------- drawing rooms


def _place(rng: np.random.Generator, dims: np.ndarray, cfg: RoomConfig) -> tuple[np.ndarray, np.ndarray]:
    """Mic at a random point (height 0.8..2 m), source at a random distance/direction."""
    margin = np.minimum(cfg.wall_margin, dims * 0.2)
    lo, hi = margin, dims - margin
    max_d = float(np.linalg.norm(hi - lo))
    for attempt in range(500):
        mic = rng.uniform(lo, hi)
        mic[2] = float(np.clip(rng.uniform(0.8, 2.0), lo[2], hi[2]))
        d = float(rng.uniform(cfg.distance_range[0], min(cfg.distance_range[1], 0.9 * max_d)))
        az = rng.uniform(0, 2 * np.pi)
        el = rng.uniform(-0.35, 0.35)  # talkers are roughly at mic height
        src = mic + d * np.array([np.cos(az) * np.cos(el), np.sin(az) * np.cos(el), np.sin(el)])
        if np.all(src >= lo) and np.all(src <= hi):
            return mic, src
    raise RuntimeError("could not place source and mic")


def draw_room(rng: np.random.Generator, cfg: RoomConfig, rt60: float | None = None) -> RoomSpec:
    """Draw a plausible room for a uniformly drawn target RT60 (or the given one)."""
    drawn = float(rng.uniform(*cfg.rt60_range))
    rt60 = drawn if rt60 is None else rt60
    classes = list(ROOM_SIZES)
    size = str(rng.choice(classes, p=np.array(cfg.size_class_probs)))
    for attempt in range(300):
        if attempt and attempt % 20 == 0:  # this class cannot reach the RT60: try another
            size = str(rng.choice(classes, p=np.array(cfg.size_class_probs)))
        dims = np.array([rng.uniform(*r) for r in ROOM_SIZES[size]])
        profiles = [str(rng.choice(list(ABSORPTION_PROFILES))) for _ in WALLS]
        rel = np.stack([ABSORPTION_PROFILES[p] * np.exp(rng.normal(0, 0.2, 7)) *
                        np.exp(rng.uniform(np.log(0.3), np.log(3.0))) for p in profiles])
        _, coeffs = scale_for_rt60(dims, rel, rt60)
        # Reject rooms that cannot reach the RT60 without absurd (clipped) absorption.
        if abs(eyring_rt60(dims, coeffs) / rt60 - 1) < 0.03 and coeffs.max() < 0.95:
            break
    mic, src = _place(rng, dims, cfg)
    return RoomSpec(dims=[round(float(d), 3) for d in dims], rt60_target=rt60, profiles=profiles,
                    wall_coeffs=rel.tolist(), scattering=[float(s) for s in rng.uniform(0.05, 0.6, 6)],
                    mic=mic.tolist(), src=src.tolist(), sim_seed=int(rng.integers(2**31 - 1)),
                    size_class=size)


def simulate(spec: RoomSpec, cfg: RoomConfig, absorption: np.ndarray) -> tuple[np.ndarray, dict]:
    """Run pyroomacoustics for ``spec`` with ``absorption`` [6, 7]; returns (rir [m], info)."""
    import pyroomacoustics as pra

    # One thread: the RIR builder sums image contributions in parallel, and a thread-count
    # dependent summation order would make the bank depend on the machine. Parallelism
    # comes from the process pool instead.
    pra.constants.set("num_threads", 1)
    mats = {w: pra.Material({"coeffs": absorption[i].tolist(), "center_freqs": BAND_CENTERS},
                            spec.scattering[i]) for i, w in enumerate(WALLS)}
    hybrid = spec.rt60_target > cfg.ism_max_rt60
    if hybrid:
        order = cfg.hybrid_ism_order
    else:
        # Order needed for the ISM to cover the decay (Sabine-based heuristic of pra).
        _, order = pra.inverse_sabine(spec.rt60_target, spec.dims)
        order = int(min(order, cfg.ism_order_cap))
    room = pra.ShoeBox(spec.dims, fs=cfg.sample_rate, materials=mats, max_order=order,
                       air_absorption=True, ray_tracing=hybrid)
    if hybrid:
        pra.random.seed(spec.sim_seed)
        room.set_ray_tracing(n_rays=cfg.n_rays, receiver_radius=cfg.receiver_radius,
                             energy_thres=cfg.rt_energy_thres, hist_bin_size=cfg.hist_bin_size)
    room.add_source(spec.src)
    room.add_microphone(spec.mic)
    room.compute_rir()
    return np.asarray(room.rir[0][0], np.float64), {"method": "hybrid" if hybrid else "ism", "max_order": order}


def simulate_to_target(spec: RoomSpec, cfg: RoomConfig) -> tuple[np.ndarray, dict, float, np.ndarray]:
    """Simulate ``spec``, re-simulating with corrected absorption while the measured RT60
    misses the target. Returns (rir [m], sim info, measured rt60, absorption [6, 7])."""
    rel = np.array(spec.wall_coeffs)
    k, absorption = scale_for_rt60(spec.dims, rel, spec.rt60_target)
    rir, sim = simulate(spec, cfg, absorption)
    rt60 = measure_rt60(rir, cfg.sample_rate)
    for _ in range(cfg.max_corrections):
        if np.isfinite(rt60) and abs(rt60 / spec.rt60_target - 1) <= cfg.rt60_tolerance:
            break
        # Total absorption ~ 1/RT60 (Sabine): rescale what the simulator actually produced.
        ratio = rt60 / spec.rt60_target if np.isfinite(rt60) else 1.0
        k *= ratio
        absorption = np.clip(k * rel, 0.01, 0.95)
        rir, sim = simulate(spec, cfg, absorption)
        rt60 = measure_rt60(rir, cfg.sample_rate)
    return rir, sim, rt60, absorption


def build_room(index: int, seed: int, cfg: RoomConfig, out_dir: str) -> dict:
    """Draw, simulate (with RT60 correction), measure, truncate and write room ``index``.

    A room whose measured RT60 is still off by more than ``reject_tolerance`` after the
    corrections is redrawn (rng ``[seed, index, attempt]``): with very non-uniform
    absorption the decay is not exponential, and pyroomacoustics' hybrid simulator leaves
    an energy gap between its ISM and ray-traced parts in some large rooms (a plateau in
    the decay curve and a meaningless RT60). Attempt 0 uses ``[seed, index]``."""
    t0 = time.perf_counter()
    best = None
    for attempt in range(cfg.max_redraws + 1):
        rng = np.random.default_rng([seed, index] if attempt == 0 else [seed, index, attempt])
        # Redraws keep the first target RT60 so the RT60 distribution stays uniform.
        spec = draw_room(rng, cfg, None if best is None else best[1].rt60_target)
        rir, sim, rt60, absorption = simulate_to_target(spec, cfg)
        err = abs(rt60 / spec.rt60_target - 1) if np.isfinite(rt60) else np.inf
        if best is None or err < best[0]:
            best = (err, spec, rir, sim, rt60, absorption, attempt)
        if err <= cfg.reject_tolerance:
            break
    _, spec, rir, sim, rt60, absorption, attempt = best
    rir = truncate_rir(rir, cfg.sample_rate, rt60)
    rir = rir / np.max(np.abs(rir))
    d0 = find_direct_index(rir, cfg.sample_rate)
    rid = f"room{index:05d}"
    split = cfg.split_by_index[index % len(cfg.split_by_index)]
    rel_path = f"{split}/{rid}.wav"
    path = Path(out_dir) / rel_path
    path.parent.mkdir(parents=True, exist_ok=True)
    write_wav(path, rir, cfg.sample_rate)
    dist = float(np.linalg.norm(np.array(spec.src) - np.array(spec.mic)))
    return {
        "id": rid, "path": rel_path, "split": split, "source": "pra",
        "rt60": round(float(measure_rt60(rir, cfg.sample_rate)), 4),
        "rt60_target": round(spec.rt60_target, 4),
        "drr_db": round(measure_drr(rir, cfg.sample_rate), 3),
        "direct_index": int(d0), "samples": int(len(rir)),
        "room_dims": spec.dims, "volume": round(float(np.prod(spec.dims)), 2), "size_class": spec.size_class,
        "distance": round(dist, 3), "mic": [round(v, 3) for v in spec.mic], "src": [round(v, 3) for v in spec.src],
        "wall_profiles": spec.profiles, "absorption_mid": round(float(absorption[:, 2:4].mean()), 4),
        "method": sim["method"], "max_order": sim["max_order"], "attempt": attempt,
        "sim_seconds": round(time.perf_counter() - t0, 3),
    }


# --------------------------------------------------------------------------- measured RIRs


def load_measured(path: Path, sample_rate: int = SAMPLE_RATE, pre_ms: float = 2.5) -> np.ndarray:
    """First channel of a measured RIR at ``sample_rate``, with the silence before the
    direct path cut to ``pre_ms`` (a long pre-delay would only delay every target)."""
    import soxr

    x, sr = sf.read(str(path), dtype="float64", always_2d=True)
    h = x[:, 0]
    if sr != sample_rate:
        h = soxr.resample(h, sr, sample_rate, quality="VHQ")
    d0 = find_direct_index(h, sample_rate)
    start = max(0, d0 - int(pre_ms * 1e-3 * sample_rate))
    h = h[start:]
    return h / max(np.max(np.abs(h)), 1e-20)


def build_measured(paths: Sequence[Path], cfg: RoomConfig, out_dir: str) -> list[dict]:
    """Add measured RIRs (all to train) with their measured RT60/DRR."""
    recs = []
    for j, p in enumerate(paths):
        h = load_measured(p, cfg.sample_rate)
        rt60 = measure_rt60(h, cfg.sample_rate)
        h = truncate_rir(h, cfg.sample_rate, rt60)
        rid = f"measured{j:05d}"
        rel = f"train/{rid}.wav"
        (Path(out_dir) / "train").mkdir(parents=True, exist_ok=True)
        write_wav(Path(out_dir) / rel, h, cfg.sample_rate)
        recs.append({"id": rid, "path": rel, "split": "train", "source": "measured",
                     "original": str(p.name), "rt60": round(float(measure_rt60(h, cfg.sample_rate)), 4),
                     "drr_db": round(measure_drr(h, cfg.sample_rate), 3),
                     "direct_index": int(find_direct_index(h, cfg.sample_rate)), "samples": int(len(h))})
    return recs


# --------------------------------------------------------------------------- CLI


def _worker(args: tuple[int, int, RoomConfig, str]) -> dict:
    return build_room(*args)


def build_bank(out: str, count: int, seed: int, jobs: int = 2, rirs: str | None = None,
               cfg: RoomConfig = RoomConfig(), progress: bool = True) -> list[dict]:
    """Build ``count`` simulated rooms (+ measured ones) into ``out``; returns records."""
    from tqdm import tqdm

    Path(out).mkdir(parents=True, exist_ok=True)
    tasks = [(i, seed, cfg, out) for i in range(count)]
    recs: list[dict] = []
    bar = tqdm(total=count, desc="rooms", unit="room", disable=not progress)
    if jobs <= 1:
        for t in tasks:
            recs.append(_worker(t))
            bar.update()
    else:
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            for r in pool.imap(_worker, tasks, chunksize=1):
                recs.append(r)
                bar.update()
    bar.close()
    if rirs:
        recs += build_measured(sorted(Path(rirs).rglob("*.wav")), cfg, out)
    with open(Path(out) / "rooms.jsonl", "w", encoding="utf-8") as f:
        for r in recs:
            # sim_seconds is wall-clock: keep it out of the (byte-deterministic) manifest.
            f.write(json.dumps({k: v for k, v in r.items() if k != "sim_seconds"}, sort_keys=True) + "\n")
    with open(Path(out) / "config.json", "w", encoding="utf-8") as f:
        json.dump({"seed": seed, "count": count, "config": asdict(cfg)}, f, indent=2, sort_keys=True)
        f.write("\n")
    return recs


def summarize(recs: Sequence[dict]) -> str:
    """Human-readable counts per split and RT60/DRR/time distributions."""
    lines = []
    for split in ("train", "val", "test"):
        r = [x for x in recs if x["split"] == split]
        if r:
            rt = np.array([x["rt60"] for x in r])
            lines.append(f"{split}: {len(r)} rirs, rt60 quartiles {np.nanpercentile(rt, [0, 25, 50, 75, 100]).round(2).tolist()}")
    sims = [x for x in recs if "sim_seconds" in x]
    if sims:
        t = np.array([x["sim_seconds"] for x in sims])
        err = np.array([x["rt60"] / x["rt60_target"] - 1 for x in sims])
        lines.append(f"per-room time: mean {t.mean():.2f} s, median {np.median(t):.2f} s, max {t.max():.2f} s")
        lines.append(f"rt60 measured/target - 1: median {np.nanmedian(err):+.3f}, |err|>15%: {np.mean(np.abs(err) > 0.15):.1%}")
        drr = np.array([x["drr_db"] for x in sims])
        lines.append(f"drr_db quartiles {np.percentile(drr, [0, 25, 50, 75, 100]).round(1).tolist()}")
        hist, edges = np.histogram([x["rt60"] for x in sims], bins=np.arange(0.0, 1.9, 0.15))
        lines.append("rt60 histogram: " + " ".join(f"{e:.2f}:{h}" for e, h in zip(edges[:-1], hist)))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m training.rooms", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the RIR bank")
    b.add_argument("--count", type=int, required=True)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--out", required=True)
    b.add_argument("--rirs", default=None, help="directory of measured RIR .wav files (added to train)")
    b.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args(argv)
    t0 = time.time()
    recs = build_bank(a.out, a.count, a.seed, a.jobs, a.rirs)
    dt = time.time() - t0
    print(f"built {len(recs)} rirs in {dt:.1f} s wall ({dt / max(1, a.count):.2f} s/room wall, jobs={a.jobs})")
    print(summarize(recs))


if __name__ == "__main__":
    main()
