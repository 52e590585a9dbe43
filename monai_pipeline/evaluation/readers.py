"""Reader agreement: the model's Dice against each radiologist beside the radiologists' Dice with each other.

For each reference nodule (a 26-connected component of the consensus mask) and each reader mask
(``lidc-convert --per-reader`` writes ``readers/<case_id>_r<k>.nii.gz``):

* a reader *marked* the nodule when a component of their mask overlaps it; their outline of the nodule is the
  union of those components;
* the model's outline is the union of the predicted components that overlap the nodule (empty: Dice 0);
* per nodule: Dice of the model against the consensus, against each reader (mean over readers), and the mean
  pairwise Dice between the readers who marked it (needs at least two).

Masks are (x, y, z) on one grid; all Dice values are computed inside the bounding box of the masks involved.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
from scipy import ndimage

from monai_pipeline.arrays import c_order, label_components


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks; both empty gives 1.0 (the project's convention)."""
    sa, sb = int(np.count_nonzero(a)), int(np.count_nonzero(b))
    if sa + sb == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(a & b)) / (sa + sb)


def _touching(labels: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Union of the components of ``labels`` that overlap ``region``."""
    ids = np.unique(labels[region])
    ids = ids[ids > 0]
    return np.isin(labels, ids) if len(ids) else np.zeros(labels.shape, bool)


def reader_files(readers_dir: Path, case_id: str) -> list[Path]:
    """``readers/<case_id>_r<k>.nii.gz`` files of a case, in reader order."""
    if not readers_dir.is_dir():
        return []
    found = [p for p in readers_dir.glob(f"{case_id}_r*.nii.gz") if p.name[len(case_id) + 2:-7].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(case_id) + 2:-7]))


def nodule_agreement(pred: np.ndarray, consensus: np.ndarray, readers: list[np.ndarray]) -> list[dict]:
    """One row per consensus nodule: ``n_readers`` (who marked it), ``model_vs_consensus``,
    ``model_vs_readers`` (mean over them), ``reader_vs_reader`` (mean pairwise; None below two readers)."""
    (p, c, *rs), _, _ = c_order(np.asarray(pred) > 0, np.asarray(consensus) > 0, *[np.asarray(r) > 0 for r in readers])
    lc, n = label_components(c, 26)
    lp, _ = label_components(p, 26)
    lrs = [label_components(r, 26)[0] for r in rs]
    rows = []
    for k, sl in enumerate(ndimage.find_objects(lc), start=1):
        if sl is None:
            continue
        nodule = lc == k
        model = _touching(lp, nodule)
        outlines = [o for o in (_touching(lr, nodule) for lr in lrs) if o.any()]
        union = nodule | model
        for o in outlines:
            union |= o
        box = ndimage.find_objects(union.astype(np.uint8))[0]
        nb, mb, ob = nodule[box], model[box], [o[box] for o in outlines]
        pairs = [dice(a, b) for a, b in itertools.combinations(ob, 2)]
        rows.append({"nodule": k, "n_readers": len(ob), "model_vs_consensus": dice(mb, nb),
                     "model_vs_readers": float(np.mean([dice(mb, o) for o in ob])) if ob else None,
                     "reader_vs_reader": float(np.mean(pairs)) if pairs else None})
    return rows
