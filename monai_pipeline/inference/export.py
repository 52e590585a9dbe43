"""The one per-case export step: network-space probabilities -> a mask on the input's own grid -> files.

:func:`export_prediction` is what every entry point calls after the network (``monai-pipeline infer``, the
Python API :func:`monai_pipeline.segment`, the bundle's inference and evaluation via :class:`ExportPredictiond`),
so the same model gives the same mask through every door:

1. back onto the input grid, inverting orientation, spacing and crop in one SimpleITK resampling:
   ``inference.resample: linear`` (default, two classes) resamples the decision margin ``p(foreground) -
   p(background)`` linearly and decides there (as nnU-Net and MONAI's ``Invertd`` recipes invert probabilities;
   foreground where ``p(foreground)`` > ``inference.foreground_threshold``, 0.5 by default),
   but only inside the boxes around the network-grid candidates (:func:`invert_foreground`), which gives exactly
   the whole-volume result at a fraction of its cost; ``nearest`` decides on the network grid and resamples the
   uint8 label (also the rule for more than two classes);
3. :func:`~monai_pipeline.postprocess.postprocess_case` in mm on the input grid (lung filter, morphology,
   hole filling, small components) -- ``monai-pipeline postprocess`` runs the same function on a saved mask;
4. the lesion table, each lesion scored by its maximum foreground probability (network space, from the
   background probability so that it ranks where the foreground one saturates: :func:`probability_score`); with
   post-processing on, lesions scoring below ``inference.min_lesion_score`` (the operating point ``train``
   chose on its validation cases) leave the mask and the table. A model calibrated with a second stage
   (``inference.candidate_classifier``, :mod:`monai_pipeline.postprocess.candidates`) scores each lesion by that
   classifier's nodule probability instead, from the lesion's size, shape, HU and network score;
5. :func:`write_prediction`: mask, lesion table, the table of every candidate (those the operating point
   dropped too, with their scores: what LUNA16's FROC ranks), optional probability map and the done-marker,
   atomically.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from scipy import ndimage

from monai_pipeline.arrays import label_components
from monai_pipeline.config import PipelineConfig
from monai_pipeline.io.formats import MASK_FORMATS, parse_formats
from monai_pipeline.io.geometry import LPS_TO_RAS, Geometry, sitk_to_xyz_array, xyz_array_to_sitk
from monai_pipeline.io.layout import PredictionLayout
from monai_pipeline.io.paths import case_id_from_path
from monai_pipeline.io.writer import atomic_write_text, dumps_strict, write_image
from monai_pipeline.postprocess import lesion_table, postprocess_case, write_lesion_csv
from monai_pipeline.postprocess.candidates import rescore
from monai_pipeline.postprocess.lesions import ScoreFn, write_candidate_csv


@dataclass
class Prediction:
    """One case's result on its input grid: ``mask`` uint8 (x, y, z), the lesion rows, optional probability map."""

    case_id: str
    mask: np.ndarray
    geometry: Geometry
    lesions: list[dict] = field(default_factory=list)
    #: every candidate lesion before the operating point's cut: lesion-table rows with ``kept`` (in the mask or
    #: not); None: the lesions are every candidate (no cut was made)
    candidates: list[dict] | None = None
    prob: sitk.Image | None = None
    seconds: dict = field(default_factory=dict)
    source_files: list[str] | None = None  # a DICOM series' slice files in the order of the third axis
    connectivity: int = 26  # of the lesions (connected components) of ``mask``
    seg_segments: str = "single"  # DICOM SEG output: one segment, or one per lesion (inference.seg_segments)

    _labels: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    def candidate_rows(self) -> list[dict]:
        """Every candidate: lesion-table rows with ``kept`` (whether the mask kept it)."""
        if self.candidates is None:
            return [{**r, "kept": True} for r in self.lesions]
        return self.candidates

    def lesion_labels(self) -> np.ndarray:
        """The lesion label map: uint16 (x, y, z), value k on the voxels of row k of ``lesions`` (0 elsewhere);
        computed once, however many formats ask for it."""
        if self._labels is None:
            self._labels = lesion_table(self.mask, self.geometry, connectivity=self.connectivity,
                                        return_labels=True)[1].astype(np.uint16)
        return self._labels


def margin_offset(threshold: float) -> float:
    """The decision margin ``p(fg) - p(bg)`` at which ``p(fg)`` equals ``threshold`` (two classes, summing to 1):
    ``p(fg) > threshold`` exactly where ``p(fg) - p(bg) > 2 threshold - 1``; 0 for the argmax's 0.5."""
    return 2.0 * threshold - 1.0


def decide(probs: torch.Tensor, threshold: float) -> np.ndarray:
    """Label (uint8, network grid) from class probabilities ``(C, X, Y, Z)``. Two classes: foreground where its
    probability is above ``threshold`` (as a margin comparison, about 10x cheaper than an argmax over the channel
    axis of a large volume; at 0.5 ties go to background, as the argmax's do). More classes: the argmax."""
    if probs.shape[0] == 2:
        label = (probs[1] - probs[0]) > margin_offset(threshold)
    else:
        label = torch.argmax(probs, dim=0)
    return label.to(torch.uint8).cpu().numpy()


def resample_to_grid(array_net: np.ndarray, affine_ras: np.ndarray, geometry: Geometry,
                     interpolator: int = sitk.sitkNearestNeighbor, pixel: int = sitk.sitkUInt8) -> sitk.Image:
    """Resample an (x, y, z) array on the network grid (voxel-to-RAS ``affine_ras``) onto ``geometry``.

    One resampling inverts orientation, spacing and crop at once; voxels outside the network grid get 0.
    """
    src = xyz_array_to_sitk(array_net, Geometry.from_ras_affine(affine_ras, array_net.shape))
    return sitk.Resample(src, geometry.empty_image(pixel), sitk.Transform(), interpolator, 0, pixel)


def _index_box(points: np.ndarray, shape, pad: int = 0) -> tuple[np.ndarray, np.ndarray] | None:
    """Integer box ``[lo, hi)`` (clipped to ``shape``) holding continuous indices ``points`` (N, 3), widened by
    ``pad`` voxels; None when it misses the grid."""
    lo = np.maximum(np.floor(points.min(0) + 1e-6).astype(np.int64) - pad, 0)
    hi = np.minimum(np.ceil(points.max(0) - 1e-6).astype(np.int64) + 1 + pad, np.asarray(shape))
    return None if np.any(hi <= lo) else (lo, hi)


def _corners(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The 8 corner indices (8, 3) of the voxel box ``[lo, hi)``."""
    return np.array([[(hi[a] - 1) if (c >> a) & 1 else lo[a] for a in range(3)] for c in range(8)], np.float64)


def _apply(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ m[:3, :3].T + m[:3, 3]


#: candidates resampled one by one by :func:`invert_foreground`; more are resampled as one box
MAX_CANDIDATE_BOXES = 64


def invert_foreground(margin_net: np.ndarray, affine_ras: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Foreground mask (uint8, (x, y, z)) on ``geometry``'s grid: the network-grid decision margin ``margin_net``
    (x, y, z; ``p(fg) - p(bg)`` less :func:`margin_offset`, voxel-to-RAS ``affine_ras``) resampled linearly,
    foreground where it is > 0.

    Linear interpolation is a convex combination of its 8 neighbours, so an input voxel can only be foreground
    within one network voxel of a network voxel that is. Each connected candidate on the network grid is
    therefore resampled alone: the input-grid box covering its voxels plus one, from the network sub-volume
    holding every interpolation neighbour of that box. The result equals resampling the whole volume (tested)
    at a cost that follows the candidates, not the volume; everything else is background. Beyond
    :data:`MAX_CANDIDATE_BOXES` candidates (a speckled prediction) one box around all of them is resampled
    instead, which is exact too and bounds the cost by one whole-volume resampling.
    """
    size = tuple(int(v) for v in geometry.size)
    out = np.zeros(size[::-1], np.uint8)  # (z, y, x), as SimpleITK's arrays; returned as an (x, y, z) view
    positive = margin_net > 0
    if not positive.any():
        return out.transpose(2, 1, 0)

    affine_ras = np.asarray(affine_ras, dtype=np.float64)
    net_to_in = np.linalg.inv(geometry.lps_affine()) @ LPS_TO_RAS @ affine_ras
    in_to_net = np.linalg.inv(net_to_in)
    net_grid = Geometry.from_ras_affine(affine_ras, margin_net.shape)
    labels, n = label_components(positive, 26)
    boxes = (ndimage.find_objects(labels) if n <= MAX_CANDIDATE_BOXES
             else ndimage.find_objects(positive.astype(np.uint8)))
    for box in boxes:
        lo, hi = np.array([b.start for b in box]) - 1, np.array([b.stop for b in box]) + 1
        in_box = _index_box(_apply(net_to_in, _corners(lo, hi)), size)
        if in_box is None:
            continue
        net_box = _index_box(_apply(in_to_net, _corners(*in_box)), margin_net.shape, pad=1)
        if net_box is None:
            continue
        (nlo, nhi), (ilo, ihi) = net_box, in_box
        sub = np.asarray(margin_net[nlo[0]:nhi[0], nlo[1]:nhi[1], nlo[2]:nhi[2]], dtype=np.float32)
        src = xyz_array_to_sitk(sub, net_grid.sub_grid(tuple(nlo), tuple(nhi - nlo)))
        ref = geometry.sub_grid(tuple(ilo), tuple(ihi - ilo)).empty_image(sitk.sitkFloat32)
        res = sitk.GetArrayFromImage(sitk.Resample(src, ref, sitk.Transform(), sitk.sitkLinear, -1.0,
                                                       sitk.sitkFloat32))
        view = out[ilo[2]:ihi[2], ilo[1]:ihi[1], ilo[0]:ihi[0]]
        view |= (res > 0).astype(np.uint8)
    return out.transpose(2, 1, 0)


def probability_score(bg_net: np.ndarray, affine_ras: np.ndarray, geometry: Geometry, kind: str = "max") -> ScoreFn:
    """A lesion scorer: the ``kind`` (``max`` or ``mean``) of the foreground probability over the network voxels
    nearest to the lesion's voxels on ``geometry``'s grid (each network voxel counted once), from the
    network-space background probability ``bg_net`` (x, y, z; voxel-to-RAS ``affine_ras``) as ``1 - bg`` in
    float64. A confident foreground probability is 1 to float32's precision (6e-8) once the logit margin passes
    about 17, while the background probability still tells such lesions apart (float32 keeps 1e-38), so the score
    ranks confident lesions instead of tying them. The maximum saturates near 1 for any confident blob; the mean
    also falls with a lesion's share of uncertain boundary voxels."""
    reduce = {"max": np.min, "mean": np.mean}[kind]
    to_net = np.linalg.inv(np.asarray(affine_ras, dtype=np.float64)) @ LPS_TO_RAS @ geometry.lps_affine()
    upper = np.asarray(bg_net.shape) - 1

    def score(idx: np.ndarray) -> float:
        ijk = np.rint(idx @ to_net[:3, :3].T + to_net[:3, 3]).astype(np.int64)
        ijk = np.unique(np.clip(ijk, 0, upper), axis=0)
        return 1.0 - float(reduce(bg_net[ijk[:, 0], ijk[:, 1], ijk[:, 2]].astype(np.float64)))

    return score


def original_geometry(original) -> Geometry:
    """The exact input grid recorded by :class:`~monai_pipeline.transforms.LoadCTd` in ``original.meta``."""
    return Geometry.from_dict(original.meta["source_geometry"])


def export_prediction(probs: torch.Tensor, affine_ras: np.ndarray, original, cfg: PipelineConfig, case_id: str,
                      save_prob: bool = False, postprocess: bool = True,
                      source_files: list[str] | None = None) -> Prediction:
    """Steps 1-4 of the module docstring for one case.

    Args:
        probs: class probabilities ``(C, X, Y, Z)`` on the network grid.
        affine_ras: that grid's voxel-to-RAS affine (4x4, mm).
        original: the input's HU ``(1, X, Y, Z)`` MetaTensor from ``LoadCTd`` (its grid is the output grid).
        cfg: the model's configuration (``postprocess`` and ``preprocessing.body_threshold_hu`` are used).
        save_prob: also resample the foreground probability (linear) onto the input grid.
        postprocess: False keeps the raw resampled decision (``infer --no-postprocess``).
        source_files: a DICOM series' slice files (third-axis order), kept for DICOM SEG output.
    """
    geometry = original_geometry(original)
    affine_ras = np.asarray(affine_ras, dtype=np.float64)
    hu = original[0].numpy() if isinstance(original, torch.Tensor) else np.asarray(original)[0]
    fg_net = probs[1:].sum(0).float().cpu().numpy()
    bg_net = probs[0].float().cpu().numpy()
    threshold = cfg.inference.foreground_threshold
    if cfg.inference.resample == "linear" and probs.shape[0] == 2:
        mask = invert_foreground(fg_net - bg_net - margin_offset(threshold), affine_ras, geometry)
    else:
        mask = sitk_to_xyz_array(resample_to_grid(decide(probs, threshold), affine_ras, geometry))
    if postprocess:
        mask = postprocess_case(mask, hu, geometry, cfg)
    score = probability_score(bg_net, affine_ras, geometry, cfg.inference.lesion_score)
    lesions, labels = lesion_table(mask, geometry, hu, cfg.postprocess.connectivity, score=score, return_labels=True)
    lesions = rescore(lesions, cfg.inference.candidate_classifier)
    candidates = None
    min_score = cfg.inference.min_lesion_score
    if postprocess and min_score > 0 and any(r["score"] < min_score for r in lesions):
        candidates = [{**r, "kept": r["score"] >= min_score} for r in lesions]
        mask = np.isin(labels, [r["lesion"] for r in candidates if r["kept"]]).astype(np.uint8)
        lesions = rescore(lesion_table(mask, geometry, hu, cfg.postprocess.connectivity, score=score),
                          cfg.inference.candidate_classifier)
    prob_img = None
    if save_prob:
        prob_img = resample_to_grid(fg_net.astype(np.float32), affine_ras, geometry, sitk.sitkLinear,
                                    sitk.sitkFloat32)
    return Prediction(str(case_id), np.asarray(mask, dtype=np.uint8), geometry, lesions, candidates, prob_img,
                      source_files=list(source_files) if source_files else None,
                      connectivity=cfg.postprocess.connectivity, seg_segments=cfg.inference.seg_segments)


def case_statistics_json(pred: Prediction, provenance: dict | None = None) -> str:
    """``<case_id>_stats.json``: per lesion its volume (mm3 and ml), equivalent and longest axial diameter (mm),
    mean and max HU, centroid (mm, LPS), score and network score; the totals; and the model and settings that
    made them."""

    lesions = [{"lesion": r["lesion"], "volume_mm3": r["volume_mm3"], "volume_ml": round(r["volume_mm3"] / 1000.0, 4),
                "equivalent_diameter_mm": r["equivalent_diameter_mm"],
                "longest_axial_diameter_mm": r["longest_axial_diameter_mm"], "mean_hu": r["mean_hu"],
                "max_hu": r["max_hu"], "centroid_lps_mm": [r["centroid_x_mm"], r["centroid_y_mm"], r["centroid_z_mm"]],
                "score": r["score"] if r["score"] != "" else None,
                "network_score": r["network_score"] if r["network_score"] != "" else None} for r in pred.lesions]
    prov = provenance or {}
    return dumps_strict({"case_id": pred.case_id, "n_lesions": len(lesions),
                         "total_volume_ml": round(sum(x["volume_ml"] for x in lesions), 4), "lesions": lesions,
                         "geometry": pred.geometry.to_dict(),
                         "model": {"sha256": prov.get("model_sha256"), "file": prov.get("model_file")},
                         "settings": prov.get("settings"), "versions": prov.get("versions")})


def write_prediction(pred: Prediction, out: str | Path, provenance: dict | None = None,
                     fmt: str = "nifti") -> list[Path]:
    """One case's outputs into the prediction folder ``out`` (names: :class:`~monai_pipeline.io.layout.
    PredictionLayout`): the mask in each format of ``fmt`` (``"nifti"``, ``"both"``, ``"nifti,dicom-seg"``: see
    :mod:`~monai_pipeline.io.formats`), the lesion table, the statistics, the probability map when there is one,
    and last the done-marker, which records the geometry and ``provenance`` (model SHA-256, settings)."""
    layout = PredictionLayout(out)
    paths = [MASK_FORMATS[name].write(pred, layout.mask(pred.case_id, name), provenance)
             for name in parse_formats(fmt)]
    paths.append(write_lesion_csv(pred.lesions, layout.lesions(pred.case_id)))
    paths.append(write_candidate_csv(pred.candidate_rows(), layout.candidates(pred.case_id)))
    paths.append(atomic_write_text(layout.stats(pred.case_id), case_statistics_json(pred, provenance)))
    if pred.prob is not None:
        paths.append(write_image(pred.prob, layout.probability(pred.case_id)))
    layout.write_marker(pred.case_id, pred.geometry, fmt, provenance)
    return paths


class ExportPredictiond(MapTransform):
    """Post-processing transform for MONAI engines (the bundle's inference): runs :func:`export_prediction`
    and :func:`write_prediction` on each decollated item.

    Expects ``keys`` (probabilities ``(C, X, Y, Z)`` from :class:`~monai_pipeline.inferers.ProbabilityInferer`),
    ``image_key`` (the preprocessed image; its affine is the network grid) and ``original_key`` (from
    :class:`~monai_pipeline.transforms.LoadCTd`); ``case_id`` is taken from the item or the file name.
    ``provenance`` is a record, or a function called once, at the first item (after the engine has loaded its
    weights), that returns it: so a config that builds this transform parses without the weights file.
    """

    def __init__(self, keys: KeysCollection, output_dir: str | Path, config: PipelineConfig,
                 image_key: str = "image", original_key: str = "original",
                 provenance: dict | Callable[[], dict] | None = None, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.output_dir, self.config = Path(output_dir), config
        self.image_key, self.original_key = image_key, original_key
        self._provenance_source, self._provenance = provenance, None if callable(provenance) else provenance

    @property
    def provenance(self) -> dict | None:
        """The provenance record written with every prediction (computed at first use when given as a function)."""
        if self._provenance is None and callable(self._provenance_source):
            self._provenance = self._provenance_source()
        return self._provenance

    def __call__(self, data: Mapping[Hashable, object]) -> dict:

        d = dict(data)
        original = d[self.original_key]
        case_id = d.get("case_id") or case_id_from_path(original.meta["filename_or_obj"])
        for key in self.key_iterator(d):
            pred = export_prediction(d[key], d[self.image_key].affine, original, self.config, str(case_id))
            write_prediction(pred, self.output_dir, self.provenance)
        return d
