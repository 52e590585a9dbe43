"""LIDC-IDRI: XML reads -> per-reader and consensus masks, a nodule table and patient-level splits.

:mod:`.xml` parses ``LidcReadMessage`` files, :mod:`.raster` turns contours into pixel masks, :mod:`.nodules`
groups the readers' annotations into nodules and builds consensus masks, :mod:`.convert` drives a TCIA download.
"""

from monai_pipeline.lidc.xml import (
    LidcRead,
    NoduleRead,
    NonNodule,
    ReadingSession,
    Roi,
    parse_read,
    read_series_uid,
)

__all__ = ["LidcRead", "NonNodule", "NoduleRead", "ReadingSession", "Roi", "parse_read", "read_series_uid"]
