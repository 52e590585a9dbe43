"""Stability over training seeds: the same recipe trained with seeds 0..N-1 (``cv --seeds N``, ``demo --seeds N``),
each run in ``OUT/seed_<s>/``, reduced to the mean and standard deviation (n - 1 in the denominator) of its
headline figures in ``OUT/seeds.json``. A figure quoted from one training run moves by about that deviation when
the model is retrained."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from monai_pipeline.io.writer import atomic_write_text

SEEDS_FILE = "seeds.json"


def headline_figures(summary: dict) -> dict[str, float | None]:
    """The figures compared across seeds from an evaluation summary (``evaluate_folder``'s)."""
    det = summary.get("detection") or {}
    return {"dice_mean": summary["metrics"]["dice"].get("mean"), "cpm": det.get("cpm"),
            "sensitivity": summary.get("lesion_sensitivity_pooled"),
            "fp_per_scan": summary.get("lesion_false_positives_per_scan")}


def seed_folder(out: Path, seed: int) -> Path:
    return Path(out) / f"seed_{seed}"


def summarize_seeds(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """``{"seeds": [...], "per_seed": {...}, "mean": {...}, "std": {...}}`` over every numeric figure present
    in all seeds (std None for one seed)."""
    seeds = sorted(per_seed)
    keys = [k for k in per_seed[seeds[0]] if all(isinstance(per_seed[s].get(k), int | float) for s in seeds)]
    mean = {k: statistics.fmean(float(per_seed[s][k]) for s in seeds) for k in keys}
    std = {k: statistics.stdev([float(per_seed[s][k]) for s in seeds]) if len(seeds) > 1 else None for k in keys}
    return {"seeds": seeds, "per_seed": {str(s): per_seed[s] for s in seeds}, "mean": mean, "std": std}


def write_seeds(out: Path, per_seed: dict[int, dict[str, Any]], ensemble: dict[str, Any] | None = None
                ) -> dict[str, Any]:
    """Write ``OUT/seeds.json`` and return it; ``ensemble``: the seeds' ensemble's figures, when it was built
    (``cv --ensemble``)."""
    result = summarize_seeds(per_seed)
    if ensemble is not None:
        result["ensemble"] = ensemble
    atomic_write_text(Path(out) / SEEDS_FILE, json.dumps(result, indent=1))
    return result


def format_seeds(result: dict[str, Any]) -> str:
    """One line per figure: ``name: mean +- std (seeds ...)``."""
    lines = []
    for k, m in result["mean"].items():
        s = result["std"][k]
        lines.append(f"{k}: {m:.3f}" + (f" +- {s:.3f}" if s is not None else "") +
                     f" over seeds {', '.join(map(str, result['seeds']))}")
    together = result.get("ensemble")
    if together:
        lines.append("the seeds' ensemble: " + ", ".join(f"{k} {v:.3f}" for k, v in together.items()
                                                          if isinstance(v, int | float)))
    return "\n".join(lines)
