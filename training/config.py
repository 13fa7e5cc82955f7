"""Training configuration: dataclasses loaded from TOML (the project's one config mechanism)."""

from __future__ import annotations

import argparse
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from training.model import ModelConfig


@dataclass(frozen=True)
class DataConfig:
    corpus: str = "/work/data/corpus"
    rooms: str = "/work/data/rooms"
    segment_seconds: float = 4.0
    train_examples_per_epoch: int = 8000
    val_examples: int = 256
    workers: int = 1
    # Augmentation overrides of training.mixing.MixConfig (field name -> value), e.g. level_dbfs = [-30, -20].
    mix: dict = field(default_factory=dict)
    # Probability that a training example is music (unset: music's share of the corpus duration, ~14 %).
    # Validation always keeps the corpus's own share.
    music_share: float | None = None
    # Probability that a training example starts with a noise-only lead of lead_seconds (uniform in
    # the range): the source silent, the mixture its noise (training.dataset.ReverbDataset).
    lead_prob: float = 0.0
    lead_seconds: list = field(default_factory=lambda: [0.05, 1.5])
    # The music gate's target probability on a lead's frames (training.gate): neither speech nor
    # music, so that a noise floor before the first sound does not end the hold.
    lead_label: float = 0.5


@dataclass(frozen=True)
class OptimConfig:
    seed: int = 0
    batch_size: int = 16
    lr: float = 1e-3
    lr_final: float = 1e-4
    # Length of the learning-rate schedule (lr decays exponentially to lr_final over these epochs).
    epochs: int = 20
    # Stop after this many epochs (0: all of ``epochs``); the schedule still spans ``epochs``. A
    # budget in epochs gives the same weights on a slower machine, only later, where a budget in
    # minutes stops a slower machine earlier in its schedule (docs/research.md, "A budget in epochs").
    run_epochs: int = 0
    grad_clip: float = 5.0
    # Wall-clock guard: training stops cleanly after the epoch that crosses it.
    max_minutes: float = 120.0
    threads: int = 2
    # "float32", or "bfloat16": the input projection, LSTM and mask layer (not the DFTs, the mask's
    # product, the music gate's head or the loss) run under CPU autocast. On this machine's AMX CPU the
    # network's forward and backward take 0.56 of the float32 time and a whole epoch 0.80
    # (docs/model.md, "Training recipe"). Validation and export stay float32.
    precision: str = "float32"
    # Start each batch from the LSTM state of the previous one (training.train.batch_start); off:
    # every batch starts from the rest state.
    carry_state: bool = False
    # With carry_state: probability that a batch slot starts from the rest state instead, so a fresh
    # stream's start stays a state the model has seen.
    state_reset_prob: float = 0.0
    # Seconds of silence that lead to the rest state streams start from at run time (the card's
    # rest_state_seconds); validation and state resets start there too. 0: the zero state.
    rest_seconds: float = 0.0
    # Initialise from this checkpoint's weights (fine-tuning); empty: random initialisation.
    init_from: str = ""
    # Validation figure that selects best.pt: "si_sdr_gain_reverb_db" (mean SI-SDR gain at RT60 >= 0.4 s)
    # or "loss" (the validation loss, which also weighs near-dry examples; lower is better).
    select: str = "si_sdr_gain_reverb_db"

    def __post_init__(self) -> None:
        if self.precision not in ("float32", "bfloat16"):
            raise ValueError(f"optim.precision is float32 or bfloat16, got {self.precision!r}")
        if not 0 <= self.run_epochs <= self.epochs:
            raise ValueError(f"optim.run_epochs is 0 (all) or 1 to epochs = {self.epochs}, got {self.run_epochs}")

    @property
    def stop_epoch(self) -> int:
        """Number of epochs this run trains (``run_epochs``, or all of ``epochs`` when it is 0)."""
        return self.run_epochs or self.epochs

    @property
    def bf16(self) -> bool:
        """Whether training steps run the network under bfloat16 autocast (``compute_loss(bf16=...)``)."""
        return self.precision == "bfloat16"


@dataclass(frozen=True)
class LossConfig:
    # Which reference the model learns to produce: "early" (direct + early reflections) or "direct".
    target: str = "early"
    # With target "early": the reference is direct + early_weight x (early - direct), so 1 is the
    # early-50 ms target and 0 the direct path. Why: the evaluation scores the output against both, and
    # `python -m training.oracle --eval-set --early-weight W` shows that even an ideal mask aimed at
    # early-50 misses the direct-path bar at RT60 0.4-0.8 s, while the ideal phase-sensitive mask aimed
    # at W = 0.75-0.85 meets all four SI-SDR bars (docs/research.md, "Can one real mask meet both SI-SDR
    # bars?"). A model trained at W = 0.8 moved only a little of its gain ("Aimed short of early-50").
    early_weight: float = 1.0
    # Soft ceiling of the per-example SNR in the loss (dB), see ``training.train.snr_db``.
    snr_max_db: float = 30.0
    # Input-relative ceiling (0: off). With a margin M > 0 each example's ceiling is its *input's* SNR
    # against the target plus M, clamped to [snr_max_db, snr_cap_max_db]; the spectral terms' floor
    # follows. Why: with one fixed 30 dB ceiling an example whose input is already 40 dB from the
    # target (dry speech, a close talker in a small room, music) gains nothing in the loss from staying
    # above 30 dB, and the model learned to leave a ~25 dB distortion floor on such input, which is
    # what costs SI-SDR in short rooms and on music (see docs/research.md, "Transparency: the runtime's DC blocker").
    snr_cap_margin_db: float = 0.0
    snr_cap_max_db: float = 50.0
    # Weight of two spectral terms in dB, each the error energy relative to the target's, on
    # power-law compressed (|X|^0.3) spectra: complex, and magnitude only (see training.train).
    spectral_db_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.target not in ("early", "direct"):
            raise ValueError(f"loss.target must be 'early' or 'direct', not {self.target!r}")
        if not 0.0 <= self.early_weight <= 1.0:
            raise ValueError(f"loss.early_weight must be in [0, 1], not {self.early_weight}")
        if self.target == "direct" and self.early_weight != 1.0:
            raise ValueError("loss.early_weight applies to target 'early' only")


@dataclass(frozen=True)
class TrainConfig:
    out_dir: str = "runs/default"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _build(cls, table: dict[str, Any]):
    known = {f.name: f for f in fields(cls)}
    unknown = set(table) - set(known)
    if unknown:
        raise ValueError(f"unknown keys for {cls.__name__}: {sorted(unknown)}")
    kwargs = {}
    for name, value in table.items():
        sub = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "loss": LossConfig}
        kwargs[name] = _build(sub[name], value) if cls is TrainConfig and name in sub else value
    return cls(**kwargs)


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a flat TOML file (one recipe, every value in it or the dataclass default) into a
    ``TrainConfig``; ``overrides`` maps 'section.key' to a value."""
    table = tomllib.loads(Path(path).read_text())
    for dotted, value in (overrides or {}).items():
        node = table
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return _build(TrainConfig, table)


def config_from_cli(argv: list[str] | None, prog: str, doc: str | None, default: Path) -> TrainConfig:
    """The ``--config FILE [--set SECTION.KEY=VALUE ...]`` command line every training entry point
    takes (``--set`` values are TOML literals, e.g. ``--set optim.epochs=2``), loaded."""
    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=default)
    parser.add_argument("--set", action="append", default=[], metavar="[SECTION.]KEY=VALUE",
                        help="override a config value (TOML literal), e.g. --set optim.epochs=2 "
                             "or --set 'out_dir=\"runs/x\"'")
    args = parser.parse_args(argv)
    return load_config(args.config, parse_sets(args.set))


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``--set [SECTION.]KEY=VALUE`` items (values are TOML literals) -> {'SECTION.KEY': value}; a key
    without a section is a top-level one (``--set 'out_dir="runs/x"'``)."""
    out: dict[str, Any] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key or "" in key.split("."):
            raise ValueError(f"--set takes [SECTION.]KEY=VALUE, got {item!r}")
        out[key] = tomllib.loads(f"v = {value}")["v"]
    return out


def parse_model_sets(items: list[str]) -> dict[str, Any]:
    """``--set model.KEY=VALUE`` items -> {KEY: value}, for commands that change only model settings
    (export, gate_report); raises ValueError naming the item for any other form."""
    sets = parse_sets(items)
    if any(not key.startswith("model.") for key in sets):
        raise ValueError(f"--set takes model.KEY=VALUE, got {items}")
    return {key.removeprefix("model."): value for key, value in sets.items()}
