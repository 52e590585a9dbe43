"""The Python API: one call from a CT on disk to a mask and its lesion table.

>>> from monai_pipeline import segment
>>> result = segment("ct/LIDC-0001", "run/model.pt", out="masks")   # doctest: +SKIP
>>> result.mask.shape, len(result.lesions)                          # doctest: +SKIP

It runs exactly what ``monai-pipeline infer`` runs (:class:`~monai_pipeline.inference.Predictor` and the
shared export step), so the mask is the CLI's to the voxel.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from monai_pipeline.inference import Prediction, Predictor, write_prediction


def segment(image: str | Path, model: str | Path | Predictor, out: str | Path | None = None,
            case_id: str | None = None, save_prob: bool = False, postprocess: bool = True, fmt: str = "nifti",
            **predictor_options: Any) -> Prediction:
    """Segment one CT (NIfTI/NRRD/MHA file, DICOM file or series folder).

    Args:
        image: the input, as ``str`` or ``Path``.
        model: a model file (``str``/``Path``) or a :class:`Predictor` already loaded (to reuse it over many calls).
        out: when given, a folder that receives ``<case_id>.nii.gz`` (the mask in the input's exact geometry,
            uint8), ``<case_id>_lesions.csv`` and the done-marker with the model's SHA-256 and settings.
        case_id: output name (default: from the file or folder name).
        save_prob: also return/write the foreground probability on the input grid.
        postprocess: apply the model's post-processing (default) or return the raw decision.
        fmt: with ``out``, "nifti" (default), "dicom-seg" (a DICOM SEG referencing the source series; DICOM
            series input only) or "both".
        predictor_options: ``device``, ``overlap``, ``tta``, ``read_options`` ... (see :class:`Predictor`);
            only with a model path.

    Returns:
        :class:`Prediction`: ``mask`` (x, y, z), ``geometry``, ``lesions`` (rows of the lesion table), ``prob``.
    """
    if isinstance(model, Predictor):
        if predictor_options:
            raise ValueError(f"predictor options go to Predictor(...), got {sorted(predictor_options)}")
        predictor = model
    else:
        predictor = Predictor(model, **predictor_options)
    pred = predictor.predict(Path(image), case_id, save_prob=save_prob, postprocess=postprocess)
    if out is not None:
        write_prediction(pred, out, predictor.provenance(save_prob, postprocess, fmt), fmt)
    return pred
