"""Sliding-window inference that writes masks in the exact geometry of each input, and the batch runner.

Per case: read (SimpleITK) -> preprocess (the model file's own configuration) -> ``SlidingWindowInferer``
(gaussian blending, optional mirroring TTA, bf16 autocast on capable CPUs / AMP on CUDA) -> argmax to uint8 in
network space -> nearest-neighbour resampling onto the input's grid with SimpleITK (one step inverts
orientation, spacing and crop; probabilities are never resampled unless ``save_prob``) -> post-processing in
mm on the input grid -> ``<case_id>.nii.gz`` and ``<case_id>_lesions.csv``, written atomically.

The batch runner (:func:`run_batch`) adds sharding (``shard=(i, n)``, automatic under torchrun), resume
(complete outputs are skipped), a background reader that prepares the next case while the current one runs,
``failures.csv``, ``timings.csv`` and ``summary.json``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from monai.data import MetaTensor
from monai.inferers import Inferer, SlidingWindowInferer
from monai.transforms import Compose, EnsureChannelFirstd

from monai_pipeline.errors import InputError, PipelineError
from monai_pipeline.io.geometry import Geometry, sitk_to_xyz_array
from monai_pipeline.io.reader import CTVolume, ReadOptions, read_ct, volume_meta
from monai_pipeline.io.writer import atomic_write_text, write_image, write_mask
from monai_pipeline.networks import load_model_file
from monai_pipeline.postprocess import lesion_table, postprocess_from_config, write_lesion_csv
from monai_pipeline.transforms.pipeline import preprocess_transforms

logger = logging.getLogger(__name__)


def cpu_has_bf16() -> bool:
    """True on CPUs with native bf16 matrix support (AVX512-BF16 or AMX), where bf16 autocast pays."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def hu_from_normalized(x: np.ndarray, cfg: dict) -> np.ndarray:
    """Undo the configured HU normalisation (exact inside the window / clipping range)."""
    pre = cfg["preprocessing"]
    if pre["normalization"] == "window":
        lo, hi = pre["hu_window"]
        return x * (hi - lo) + lo
    st = pre["intensity_stats"]
    return x * st["std"] + st["mean"]


class AutocastInferer(Inferer):
    """Runs another inferer under ``torch.autocast`` and returns float32 (the engines' extension point for
    mixed precision on the CPU, where MONAI's own ``amp`` flag is CUDA-only). Weights and the optimiser
    stay float32; convolutions run in bf16 on CPUs with AVX512-BF16/AMX."""

    def __init__(self, base: Inferer, device_type: str = "cpu", dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        self.base, self.device_type, self.dtype = base, device_type, dtype

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs):
        with torch.autocast(self.device_type, dtype=self.dtype):
            out = self.base(inputs, network, *args, **kwargs)
        return out.float()


def use_cpu_bf16(setting: bool | str, device: torch.device) -> bool:
    """Resolve a ``bf16`` setting (true/false/"auto") for ``device``: auto = CPU with native bf16."""
    if device.type != "cpu":
        return False
    return setting is True or (setting == "auto" and cpu_has_bf16())


def build_inferer(cfg: dict, sw_device: str | torch.device | None = None,
                  device: str | torch.device | None = None) -> SlidingWindowInferer:
    """The configured ``SlidingWindowInferer`` (gaussian blending, weights computed once at construction).

    ``sw_device`` runs the windows (the network's device); ``device`` accumulates the full-volume output
    (``"cpu"`` lets a GPU infer volumes whose outputs would not fit in its memory).
    """
    inf = cfg["inference"]
    return SlidingWindowInferer(
        roi_size=tuple(inf["roi_size"]), sw_batch_size=int(inf["sw_batch_size"]), overlap=float(inf["overlap"]),
        mode=inf.get("mode", "gaussian"), sigma_scale=float(inf.get("sigma_scale", 0.125)),
        sw_device=sw_device, device=device, progress=False)


def resample_to_grid(array_net: np.ndarray, affine_ras: np.ndarray, geometry: Geometry,
                     interpolator: int = sitk.sitkNearestNeighbor, pixel: int = sitk.sitkUInt8) -> sitk.Image:
    """Resample an (x, y, z) array on the network grid (voxel-to-RAS ``affine_ras``) onto ``geometry``.

    One resampling inverts orientation, spacing and crop at once; voxels outside the network grid get 0.
    """
    from monai_pipeline.io.geometry import xyz_array_to_sitk

    src = xyz_array_to_sitk(array_net, Geometry.from_ras_affine(affine_ras, array_net.shape))
    return sitk.Resample(src, geometry.empty_image(pixel), sitk.Transform(), interpolator, 0, pixel)


@dataclass
class Prediction:
    case_id: str
    mask: np.ndarray  # uint8 (x, y, z) on the input grid
    geometry: Geometry
    lesions: list[dict] = field(default_factory=list)
    prob: sitk.Image | None = None
    seconds: dict = field(default_factory=dict)


class Predictor:
    """Loads a model file once and predicts volumes.

    Args:
        model_path: a ``model.pt`` written by ``monai-pipeline train`` (all that is needed).
        device: where the network runs ("cpu", "cuda", "cuda:1"; default: cuda when available).
        overlap, sw_batch_size, tta, bf16: override the model's ``inference`` configuration.
        stitch_device: where the full-volume output is accumulated (``SlidingWindowInferer(device=...)``);
            "cpu" lets a GPU infer volumes whose logits would not fit in its memory.
        postprocess: overrides of the model's ``postprocess`` configuration.
    """

    def __init__(self, model_path: str | Path, device: str | None = None, overlap: float | None = None,
                 sw_batch_size: int | None = None, tta: bool | None = None, bf16: bool | str | None = None,
                 stitch_device: str | None = None, postprocess: dict | None = None,
                 read_options: ReadOptions | None = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.network, self.blob = load_model_file(model_path, self.device)
        cfg = self.blob["config"]
        inf = dict(cfg["inference"])
        for k, v in (("overlap", overlap), ("sw_batch_size", sw_batch_size), ("tta", tta), ("bf16", bf16)):
            if v is not None:
                inf[k] = v
        if not 0 <= float(inf["overlap"]) < 1:
            raise PipelineError(f"overlap must be >= 0 and < 1, got {inf['overlap']}")
        if int(inf["sw_batch_size"]) < 1:
            raise PipelineError(f"sw_batch_size must be >= 1, got {inf['sw_batch_size']}")
        self.cfg = {**cfg, "inference": inf, "postprocess": {**cfg["postprocess"], **(postprocess or {})}}
        self.read_options = read_options or ReadOptions()
        self.preprocess = Compose([EnsureChannelFirstd(keys="image", channel_dim="no_channel"),
                                   *preprocess_transforms(self.cfg, ("image",))])
        self.inferer = build_inferer(self.cfg, sw_device=self.device, device=stitch_device or self.device)
        self.autocast = (
            torch.autocast("cuda", dtype=torch.float16) if self.device.type == "cuda" else
            torch.autocast("cpu", dtype=torch.bfloat16) if use_cpu_bf16(inf.get("bf16", "auto"), self.device)
            else nullcontext())
        self.labels = self.blob.get("labels", {})

    # -- stages -------------------------------------------------------------------------------------------
    def load(self, path: str | Path) -> CTVolume:
        return read_ct(path, self.read_options)

    def prepare(self, volume: CTVolume) -> dict:
        """Preprocessed network input (MetaTensor with the affine of the cropped, resampled RAS grid)."""
        arr = sitk_to_xyz_array(volume.image)  # HU as stored (int16): converted to float after the crop
        data = self.preprocess({"image": MetaTensor(torch.from_numpy(arr), meta=volume_meta(volume))})
        if min(data["image"].shape[1:]) == 0:
            thr = self.cfg["preprocessing"]["body_threshold_hu"]
            raise InputError(volume.source, f"no voxel above {thr} HU to crop the body to (is this a CT in HU?)")
        return data

    @torch.no_grad()
    def logits(self, image: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities (C, X, Y, Z) on the stitching device, averaged over mirrorings when TTA is on."""
        x = image[None].to(self.device)
        flips = [()] + ([(2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)] if self.cfg["inference"]["tta"] else [])
        acc = None
        with self.autocast:
            for f in flips:
                xi = torch.flip(x, f) if f else x
                out = self.inferer(xi.as_tensor() if isinstance(xi, MetaTensor) else xi, self.network)
                out = torch.softmax(out.float(), dim=1)
                out = torch.flip(out, f) if f else out
                acc = out if acc is None else acc + out
        return (acc / len(flips))[0]

    def restrict_to_lungs(self, label_net: np.ndarray, image: torch.Tensor, affine: np.ndarray) -> np.ndarray:
        """``postprocess.lung_filter``: drop components lying mostly outside the lungs (network grid)."""
        post = self.cfg["postprocess"]
        if not post.get("lung_filter") or not label_net.any():
            return label_net
        from monai_pipeline.postprocess import keep_components_in_region, lung_region

        hu = hu_from_normalized(np.asarray(image[0].detach().cpu()), self.cfg)
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        region = lung_region(hu, spacing, self.cfg["preprocessing"]["body_threshold_hu"],
                             float(post.get("lung_closing_mm", 10.0)))
        if not region.any():  # not a chest CT as far as we can tell: keep everything
            return label_net
        return keep_components_in_region(label_net, region, float(post.get("lung_min_fraction", 0.5)),
                                         int(post.get("connectivity", 26))).astype(np.uint8)

    def predict(self, volume: CTVolume, case_id: str = "case", save_prob: bool = False,
                prepared: dict | None = None) -> Prediction:
        """Mask (input grid), lesion table and timings for one volume; ``prepared`` is the output of
        :meth:`prepare` when the caller already has it (the batch runner prepares in the background)."""
        t0 = time.perf_counter()
        data = prepared if prepared is not None else self.prepare(volume)
        t1 = time.perf_counter()
        img = data["image"]
        probs = self.logits(img)
        t2 = time.perf_counter()
        # two classes: a comparison is ~10x cheaper than argmax over the channel axis of a large volume
        label_net = ((probs[1] > probs[0]) if probs.shape[0] == 2 else torch.argmax(probs, dim=0)).to(torch.uint8)
        label_net = label_net.cpu().numpy()
        affine = np.asarray(img.affine, dtype=np.float64)
        label_net = self.restrict_to_lungs(label_net, img, affine)
        geom = volume.geometry
        mask = sitk_to_xyz_array(resample_to_grid(label_net, affine, geom))
        prob_img = None
        if save_prob:
            fg = probs[1:].sum(0).float().cpu().numpy().astype(np.float32)
            prob_img = resample_to_grid(fg, affine, geom, sitk.sitkLinear, sitk.sitkFloat32)
        del probs
        t3 = time.perf_counter()
        mask = postprocess_from_config(mask, geom.spacing, self.cfg["postprocess"])
        hu = sitk_to_xyz_array(volume.image)
        lesions = lesion_table(mask, geom, hu, int(self.cfg["postprocess"].get("connectivity", 26)))
        t4 = time.perf_counter()
        return Prediction(case_id, mask, geom, lesions, prob_img,
                          {"preprocess_s": t1 - t0, "network_s": t2 - t1, "invert_s": t3 - t2, "postprocess_s": t4 - t3})


def write_prediction(pred: Prediction, out: Path) -> list[Path]:
    """Mask, lesion table (and probability map) for one case; the done-marker last."""
    paths = [write_mask(pred.mask, pred.geometry, out / f"{pred.case_id}.nii.gz"),
             write_lesion_csv(pred.lesions, out / f"{pred.case_id}_lesions.csv")]
    if pred.prob is not None:
        paths.append(write_image(pred.prob, out / f"{pred.case_id}_prob.nii.gz"))
    atomic_write_text(out / ".done" / f"{pred.case_id}.json",
                      json.dumps({"case_id": pred.case_id, "geometry": pred.geometry.to_dict()}))
    return paths


def is_complete(out: Path, case_id: str) -> bool:
    """An output counts as done when its marker exists and the mask header reads with the marker's geometry."""
    marker = out / ".done" / f"{case_id}.json"
    mask = out / f"{case_id}.nii.gz"
    if not marker.is_file() or not mask.is_file() or not (out / f"{case_id}_lesions.csv").is_file():
        return False
    try:
        geom = Geometry.from_dict(json.loads(marker.read_text())["geometry"])
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(mask))
        reader.ReadImageInformation()
        got = Geometry(tuple(reader.GetSize()), tuple(reader.GetSpacing()), tuple(reader.GetOrigin()),
                       tuple(reader.GetDirection()))
        return got.matches(geom, atol_mm=1e-3)
    except Exception:  # noqa: BLE001 - anything unreadable is simply not complete
        return False


def shard_cases(cases: list[tuple[str, str]], shard: tuple[int, int] | None) -> list[tuple[str, str]]:
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


def output_paths(out: Path, case_id: str) -> list[Path]:
    """Every file a case may write (mask, lesions, probability map, overlay, done-marker)."""
    return [out / f"{case_id}.nii.gz", out / f"{case_id}_lesions.csv", out / f"{case_id}_prob.nii.gz",
            out / "png" / f"{case_id}.png", out / ".done" / f"{case_id}.json"]


def _remove_stale_parts(out: Path, case_ids: list[str]) -> None:
    """Temporary files a killed run left for these cases (only ours: shards may share ``out``)."""
    from monai_pipeline.io.writer import stale_parts

    for cid in case_ids:
        for target in output_paths(out, cid):
            for p in stale_parts(target):
                p.unlink(missing_ok=True)


def run_batch(predictor: Predictor, cases: list[tuple[str, str]], out: str | Path, shard: tuple[int, int] | None = None,
              save_prob: bool = False, progress: bool = True, overlays: dict[str, str] | None = None) -> BatchSummary:
    """Predict ``cases`` ((case_id, input path) pairs) into ``out``; never stops at a failing case.

    ``overlays`` maps case ids to ground-truth label paths for PNG overlays (the demo uses it).
    """
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ids = [c[0] for c in cases]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise PipelineError(f"case ids must be unique, got duplicates: {', '.join(dup[:5])}")
    mine = shard_cases(cases, shard)
    _remove_stale_parts(out, [c[0] for c in mine])
    summary = BatchSummary()
    todo = []
    for cid, path in mine:
        if is_complete(out, cid):
            summary.skipped += 1
        else:
            todo.append((cid, path))
    tag = f".{shard[0]}of{shard[1]}" if shard else (f".rank{os.environ['RANK']}" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "")
    fail_csv, time_csv = out / f"failures{tag}.csv", out / f"timings{tag}.csv"

    def load_and_prepare(path: str):
        vol = predictor.load(path)
        return vol, predictor.prepare(vol)

    pool = ThreadPoolExecutor(max_workers=1)
    futures: dict[int, Future] = {}
    if todo:
        futures[0] = pool.submit(load_and_prepare, todo[0][1])
    bar = tqdm(total=len(todo), desc="infer", unit="case", disable=not progress)
    for k, (cid, path) in enumerate(todo):
        if k + 1 < len(todo):
            futures[k + 1] = pool.submit(load_and_prepare, todo[k + 1][1])  # background read of the next case
        t0 = time.perf_counter()
        try:
            vol, prepared = futures.pop(k).result()
            pred = predictor.predict(vol, cid, save_prob=save_prob, prepared=prepared)
            write_prediction(pred, out)
            if overlays and cid in overlays:
                from monai_pipeline.io.geometry import xyz_array_to_sitk
                from monai_pipeline.visualize import save_overlays_png

                truth = sitk.ReadImage(overlays[cid]) if overlays[cid] else None
                save_overlays_png(vol.image, xyz_array_to_sitk(pred.mask, pred.geometry), truth,
                                  out / "png" / f"{cid}.png")
            summary.done += 1
            _append_csv(time_csv, ["case_id", "total_s", *pred.seconds.keys()],
                        [cid, f"{time.perf_counter() - t0:.3f}", *(f"{v:.3f}" for v in pred.seconds.values())])
        except (PipelineError, RuntimeError, MemoryError, OSError, ValueError) as err:
            reason = str(err).splitlines()[0] if str(err) else err.__class__.__name__
            if isinstance(err, torch.cuda.OutOfMemoryError | MemoryError):
                reason = f"out of memory: {reason}"
                torch.cuda.empty_cache() if torch.cuda.is_available() else None
            logger.error("%s: failed: %s", cid, reason)
            summary.failed += 1
            summary.failures.append((cid, reason))
            _append_csv(fail_csv, ["case_id", "input", "reason"], [cid, path, reason])
        bar.update(1)
    bar.close()
    pool.shutdown()
    atomic_write_text(out / f"summary{tag}.json", json.dumps(
        {"done": summary.done, "skipped": summary.skipped, "failed": summary.failed, "total": len(mine)}, indent=1))
    return summary


def cases_from_inputs(inputs: list[str]) -> list[tuple[str, str]]:
    from monai_pipeline.data.manifest import case_id_from_path

    out = []
    for p in inputs:
        if not Path(p).exists():
            raise InputError(p, "does not exist")
        out.append((case_id_from_path(p), str(p)))
    return out


def cases_from_manifest(manifest: str | Path, sections: tuple[str, ...] = ("test",)) -> list[tuple[str, str]]:
    from monai_pipeline.data.manifest import load_manifest

    entries = [e for s in sections for e in load_manifest(manifest, s)]
    if not entries:
        raise InputError(manifest, f"has no cases in {', '.join(sections)}")
    return [(e["case_id"], e["image"]) for e in entries]
