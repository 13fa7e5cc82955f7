"""The release step: join an evaluation's measured results into an exported model's card.

    python -m export.card models/NAME.onnx --metrics docs/eval/NAME.json

``python -m export`` writes the graph and its contract card, which says what the graph takes, holds
and gives and how it was trained; quality is measured afterwards, through the runtime, by
``python -m training.evaluate --model models/NAME.onnx --out docs/eval/NAME.json``. This step reads that
result file and writes into the card (beside the .onnx and inside it) its tables (``metrics``: the
evaluation's config, test set and summary, its warm streams' section when it has one, and the source
file), the targets it checked, the music gate's measured pass-through share on a noise floor
(``noise_floor_pass_share``), and the ``known_limits`` those imply. It reads files only: export imports nothing from evaluation.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from export.onnx_export import attach_card, known_limits
from training.model import ModelConfig

# What of an evaluation's result goes on the card: its tables, not its per-example rows. ``warm`` (the
# warm streams: scored metrics, time to the gain, median windowed-gain curves per RT60 bin) is there
# only when the evaluation ran them.
CARD_METRICS: tuple[str, ...] = ("config", "test_set", "summary", "warm", "targets")


def release_card(card: dict, evaluation: dict, source: str) -> dict:
    """``card`` with the measured results of ``evaluation`` (a ``training.evaluate`` result) joined in."""
    cfg = ModelConfig.from_dict(card["model_config"])
    out = {k: v for k, v in card.items() if k != "noise_floor_pass_share"}
    out["metrics"] = {**{k: evaluation[k] for k in CARD_METRICS if k in evaluation}, "source": source}
    noise = evaluation.get("noise_floor_pass_share")
    if noise:
        out["noise_floor_pass_share"] = noise
    out["known_limits"] = known_limits(cfg, noise, evaluation.get("targets"))
    return out


def release(onnx_path: Path, metrics_path: Path) -> dict:
    """Rewrite the card of ``onnx_path`` (its JSON beside it and the copy inside the graph) with the
    results in ``metrics_path``. Returns the new card."""
    import onnx

    proto = onnx.load(str(onnx_path), load_external_data=False)
    embedded = {p.key: p.value for p in proto.metadata_props}.get("dereverb.card")
    if embedded is None:
        raise ValueError(f"{onnx_path}: no dereverb.card in the graph (not written by python -m export)")
    card = release_card(json.loads(embedded), json.loads(metrics_path.read_text()), str(metrics_path))
    attach_card(onnx_path, card)
    onnx_path.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    return card


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.card", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="an .onnx written by python -m export")
    parser.add_argument("--metrics", type=Path, required=True, help="a python -m training.evaluate --out JSON")
    args = parser.parse_args(argv)
    card = release(args.model, args.metrics)
    print(f"wrote the card of {args.model}: {len(card['known_limits'])} known limits")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
