"""monai-pipeline: CT volumes in, geometry-exact 3D segmentation masks out.

Stages live in one module each: :mod:`io`, :mod:`data`, :mod:`transforms`, :mod:`networks`,
:mod:`training`, :mod:`inference`, :mod:`postprocess`, :mod:`evaluation`, :mod:`lidc`, :mod:`cli`.
"""

__version__ = "0.1.0"
