"""The batch runner: many inputs into one folder, resumable, sharded, never stopped by one bad case.

Sharding (``shard=(i, n)``, automatic under torchrun), resume (a case is skipped only when its outputs are
complete *and* were made by the same model with the same settings), a background reader that prepares the
next case while the current one runs, helper processes on a CPU (:mod:`~monai_pipeline.inference.workers`),
``failures.csv``, ``timings.csv`` and ``summary.json``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from monai_pipeline.errors import InputError, PipelineError
from monai_pipeline.inference.case import Case, CaseOptions, CaseOutcome, predict_and_write, predict_case
from monai_pipeline.inference.export import Prediction
from monai_pipeline.inference.predictor import Predictor
from monai_pipeline.inference.workers import HelperProcesses, resolve_workers
from monai_pipeline.io.layout import PredictionLayout
from monai_pipeline.io.writer import atomic_write_text, stale_parts
from monai_pipeline.postprocess.lesions import LESION_FIELDS
from monai_pipeline.runtime import freed_memory_kept

logger = logging.getLogger(__name__)


def provenance_difference(old: dict, new: dict) -> str | None:
    """None when ``old`` and ``new`` provenance records describe the same model and settings; else what differs."""
    if not old:
        return "it records no model (made by an older version)"
    if old.get("model_sha256") != new["model_sha256"]:
        return (f"it was made by another model (SHA-256 {str(old.get('model_sha256'))[:12]}..., "
                f"now {new['model_sha256'][:12]}...)")
    if old.get("settings_sha256") != new["settings_sha256"]:
        before, now = old.get("settings", {}), new["settings"]
        keys = []
        for sec in ("inference", "postprocess"):
            x, y = before.get(sec) or {}, now.get(sec) or {}
            keys += [f"{sec}.{k}" for k in sorted(set(x) | set(y)) if x.get(k) != y.get(k)]
        keys += [k for k in ("save_prob", "read_options") if before.get(k) != now.get(k)]
        if (before.get("postprocess") is None) != (now.get("postprocess") is None):
            keys.append("postprocess on/off")
        return f"it was made with other settings ({', '.join(keys) or 'settings hash differs'})"
    return None


def check_existing_outputs(out: Path, case_ids: list[str], provenance: dict, overwrite: bool) -> None:
    """Refuse (before any work) to mix outputs of another model or other settings into ``out``."""
    if overwrite:
        return
    layout = PredictionLayout(out)
    for cid in case_ids:
        rec = layout.read_marker(cid)
        if rec is None:
            continue
        diff = provenance_difference(rec.get("provenance") or {}, provenance)
        if diff:
            raise InputError(layout.mask(cid), f"already exists and {diff}",
                             hint="use --overwrite to replace it, or another --out")


def shard_cases(cases: list[Case], shard: tuple[int, int] | None) -> list[Case]:
    """Deterministic I-th of N slices (round-robin over the sorted case ids)."""
    if shard is None:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1:
            shard = (int(os.environ.get("RANK", "0")), world)
    if shard is None:
        return cases
    i, n = shard
    if not (n >= 1 and 0 <= i < n):
        raise PipelineError(f"shard must be I/N with 0 <= I < N, got {i}/{n}")
    ordered = sorted(cases)
    return [c for k, c in enumerate(ordered) if k % n == i]


@dataclass
class BatchSummary:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)


def _append_csv(path: Path, header: list[str], row: list) -> None:
    new = not path.exists()
    buf = io.StringIO()
    w = csv.writer(buf)
    if new:
        w.writerow(header)
    w.writerow(row)
    with open(path, "a") as fh:
        fh.write(buf.getvalue())
        fh.flush()
        os.fsync(fh.fileno())


def _remove_stale_parts(out: Path, case_ids: list[str]) -> None:
    """Temporary files a killed run left for these cases (only ours: shards may share ``out``)."""

    layout = PredictionLayout(out)
    for cid in case_ids:
        for target in layout.case_files(cid):
            for p in stale_parts(target):
                p.unlink(missing_ok=True)


def run_batch(predictor: Predictor, cases: list[Case], out: str | Path, shard: tuple[int, int] | None = None,
              save_prob: bool = False, progress: bool = True, overlays: dict[str, str] | None = None,
              postprocess: bool = True, overwrite: bool = False, fmt: str = "nifti",
              preview: bool = False, workers: int | str = 1) -> BatchSummary:
    """Predict ``cases`` ((case_id, input path) pairs) into ``out``; never stops at a failing case.

    Outputs made earlier by the same model with the same settings are skipped (resume); outputs of another
    model or other settings stop the run before any work unless ``overwrite``. ``overlays`` maps case ids to
    ground-truth label paths for PNG overlays (the demo uses it). ``workers`` (a number or ``"auto"``, see
    :func:`~monai_pipeline.inference.workers.resolve_workers`): processes predicting side by side on a CPU, each
    with its share of the threads; the masks are the same as with one.
    """

    out = Path(out)
    cases = [Case(*c) for c in cases]  # (case_id, path) pairs are accepted too
    ids = [c.case_id for c in cases]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise PipelineError(f"case ids must be unique, got duplicates: {', '.join(dup[:5])}")
    mine = shard_cases(cases, shard)
    provenance = predictor.provenance(save_prob, postprocess, fmt)
    check_existing_outputs(out, [c.case_id for c in mine], provenance, overwrite)
    summary = BatchSummary()
    layout = PredictionLayout(out)
    todo = []
    for case in mine:
        if not overwrite and layout.is_complete(case.case_id):
            summary.skipped += 1
        else:
            todo.append(case)
    n_workers = resolve_workers(workers, len(todo), predictor.device)
    out.mkdir(parents=True, exist_ok=True)
    _remove_stale_parts(out, [c.case_id for c in mine])
    torchrun = int(os.environ.get("WORLD_SIZE", "1")) > 1
    tag = f".{shard[0]}of{shard[1]}" if shard else (f".rank{os.environ['RANK']}" if torchrun else "")
    fail_csv, time_csv = layout.batch_file("failures", tag), layout.batch_file("timings", tag)
    if overwrite:  # every case is predicted again: the rows of earlier runs would describe outputs now replaced
        for stale in (fail_csv, time_csv):
            stale.unlink(missing_ok=True)
    opts = CaseOptions(out, provenance, save_prob, postprocess, fmt, preview, overlays)
    bar = tqdm(total=len(todo), desc="infer", unit="case", disable=not progress)

    def record(outcome: CaseOutcome) -> None:
        if outcome.seconds is not None:
            summary.done += 1
            _append_csv(time_csv, ["case_id", *outcome.seconds.keys()],
                        [outcome.case_id, *(f"{v:.3f}" for v in outcome.seconds.values())])
        else:
            summary.failed += 1
            summary.failures.append((outcome.case_id, str(outcome.reason)))
            _append_csv(fail_csv, ["case_id", "input", "reason"], [outcome.case_id, outcome.path, outcome.reason])
        bar.update(1)

    threads = torch.get_num_threads()
    per_worker = max(1, threads // n_workers)
    if n_workers == 1:
        remaining = iter(todo)
        _predict_here(predictor, lambda: next(remaining, None), opts, record)
    else:
        logger.info("%d processes x %d thread(s)", n_workers, per_worker)
        torch.set_num_threads(per_worker)
        try:
            with HelperProcesses(n_workers - 1, predictor, todo, opts, per_worker, freed_memory_kept()) as helpers:
                _predict_here(predictor, helpers.take, opts, record,
                              between=lambda: [record(o) for o in helpers.outcomes(wait=False)])
                for outcome in helpers.outcomes(wait=True):
                    record(outcome)
                # a case a helper died before receiving went back to the queue after this process had emptied it
                _predict_here(predictor, helpers.take, opts, record)
        finally:
            torch.set_num_threads(threads)
    bar.close()
    write_batch_lesions(out, [c.case_id for c in mine], layout.batch_file("lesions", tag))
    atomic_write_text(layout.batch_file("summary", tag), json.dumps(
        {"done": summary.done, "skipped": summary.skipped, "failed": summary.failed, "total": len(mine),
         "processes": n_workers, "threads_per_process": per_worker, "provenance": provenance},
        indent=1))
    return summary


def _predict_here(predictor: Predictor, take: Callable[[], Case | None], opts: CaseOptions,
                  record: Callable[[CaseOutcome], None], between: Callable[[], object] = lambda: None) -> None:
    """Predict cases in this process until ``take`` returns None, reading the next case in the background while
    the current one runs; ``between`` runs after each case."""
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        case = take()
        future = pool.submit(predictor.load, case.path, case.series_uid) if case else None
        while case is not None:
            following = take()
            # the next case is read in the background while this one is predicted
            next_future = pool.submit(predictor.load, following.path, following.series_uid) if following else None
            record(predict_case(predictor, case, opts, load=future.result))
            between()
            case, future = following, next_future
    finally:
        pool.shutdown(cancel_futures=True)


def write_batch_lesions(out: Path, case_ids: list[str], path: Path) -> Path:
    """One table across the batch: every case's lesion rows (done now or earlier) with its ``case_id`` first."""

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["case_id", *LESION_FIELDS], extrasaction="ignore")
    w.writeheader()
    layout = PredictionLayout(out)
    for cid in case_ids:
        f = layout.lesions(cid)
        if f.is_file():
            with open(f) as fh:
                for row in csv.DictReader(fh):
                    w.writerow({"case_id": cid, **row})
    return atomic_write_text(path, buf.getvalue())


def predict_single(predictor: Predictor, case: Case, opts: CaseOptions,
                   overwrite: bool = False) -> tuple[Prediction, list[Path]]:
    """One input, all or nothing: outputs of another model or other settings in ``opts.out`` are refused unless
    ``overwrite``, and a bad input raises (nothing is written). Returns the prediction and its files."""
    check_existing_outputs(opts.out, [case.case_id], opts.provenance, overwrite)
    return predict_and_write(predictor, case, opts)
