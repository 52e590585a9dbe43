"""Parsing LIDC ``LidcReadMessage`` XML (versions 1.7 to 1.8.1, with or without the ``http://www.nih.gov``
namespace). Chest-radiograph reads (``IdriReadMessage``) are recognised and skipped.

Coordinates are as in the files: ``x`` = column, ``y`` = row of the 512x512 slice (pixels);
``z`` = ``imageZposition`` (mm). Numbers tolerate surrounding white space.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

from monai_pipeline.errors import InputError

CHARACTERISTICS = ("subtlety", "internalStructure", "calcification", "sphericity", "margin", "lobulation",
                   "spiculation", "texture", "malignancy")


@dataclass
class Roi:
    z: float  # imageZposition, mm
    sop_uid: str
    inclusion: bool
    points: np.ndarray  # (N, 2) int: x = column, y = row


@dataclass
class NoduleRead:
    """One reader's annotation of one nodule."""

    session: int  # 1-based reading session index
    nodule_id: str
    characteristics: dict[str, int]
    rois: list[Roi]

    @property
    def is_small(self) -> bool:
        """A nodule under 3 mm: marked by a single point (one roi with one edge-map point)."""
        return all(len(r.points) <= 1 for r in self.rois)


@dataclass
class NonNodule:
    session: int
    non_nodule_id: str
    z: float
    sop_uid: str
    x: int
    y: int


@dataclass
class ReadingSession:
    index: int  # 1-based
    radiologist_id: str
    annotation_version: str
    nodules: list[NoduleRead] = field(default_factory=list)
    non_nodules: list[NonNodule] = field(default_factory=list)


@dataclass
class LidcRead:
    source: str
    version: str
    series_uid: str
    study_uid: str
    sessions: list[ReadingSession]

    @property
    def nodule_reads(self) -> list[NoduleRead]:
        return [n for s in self.sessions for n in s.nodules]

    def counts(self) -> dict[str, int]:
        reads = self.nodule_reads
        rois = [r for n in reads for r in n.rois]
        return {"sessions": len(self.sessions), "nodule_reads": len(reads),
                "with_characteristics": sum(bool(n.characteristics) for n in reads),
                "small": sum(n.is_small for n in reads), "rois": len(rois),
                "exclusion_rois": sum(not r.inclusion for r in rois),
                "non_nodules": sum(len(s.non_nodules) for s in self.sessions)}


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _strip_namespaces(root: ET.Element) -> ET.Element:
    for el in root.iter():
        el.tag = _local(el.tag)
    return root


def _text(el: ET.Element | None, default: str = "") -> str:
    return default if el is None or el.text is None else el.text.strip()


def _num(el: ET.Element | None, source: str, what: str) -> float:
    t = _text(el)
    try:
        return float(t)
    except ValueError as err:
        raise InputError(source, f"{what} must be a number, got {t!r}") from err


def _roi(el: ET.Element, source: str) -> Roi:
    pts = [(int(round(_num(e.find("xCoord"), source, "xCoord"))), int(round(_num(e.find("yCoord"), source, "yCoord"))))
           for e in el.findall("edgeMap")]
    return Roi(z=_num(el.find("imageZposition"), source, "imageZposition"), sop_uid=_text(el.find("imageSOP_UID")),
               inclusion=_text(el.find("inclusion"), "TRUE").upper() != "FALSE",
               points=np.asarray(pts, dtype=np.int32).reshape(-1, 2))


def _characteristics(el: ET.Element | None, source: str) -> dict[str, int]:
    if el is None:
        return {}
    out = {}
    for name in CHARACTERISTICS:
        c = el.find(name)
        if c is not None and _text(c):
            out[name] = int(round(_num(c, source, name)))
    return out


def _root(source: str | Path | IO[bytes]) -> tuple[ET.Element, str]:
    name = getattr(source, "name", str(source))
    try:
        root = ET.parse(source).getroot()
    except ET.ParseError as err:
        raise InputError(name, f"not well-formed XML ({err})") from err
    return _strip_namespaces(root), str(name)


def parse_read(source: str | Path | IO[bytes]) -> LidcRead | None:
    """Parse one XML file (path or binary file object); ``None`` for chest-radiograph reads."""
    root, name = _root(source)
    if root.tag == "IdriReadMessage":
        return None
    if root.tag != "LidcReadMessage":
        raise InputError(name, f"is not an LIDC read (root element {root.tag!r})")
    header = root.find("ResponseHeader")
    series = _text(header.find("SeriesInstanceUid")) if header is not None else ""
    if not series and header is not None:
        series = _text(header.find("SeriesInstanceUID"))
    sessions = []
    for i, s in enumerate(root.findall("readingSession"), start=1):
        sess = ReadingSession(index=i, radiologist_id=_text(s.find("servicingRadiologistID"), "unknown"),
                              annotation_version=_text(s.find("annotationVersion")))
        for n in s.findall("unblindedReadNodule"):
            try:
                sess.nodules.append(NoduleRead(i, _text(n.find("noduleID")),
                                               _characteristics(n.find("characteristics"), name),
                                               [_roi(r, name) for r in n.findall("roi")]))
            except InputError as err:
                raise InputError(name,
                                 f"reading session {i}, nodule {_text(n.find('noduleID'))}: {err.problem}") from err
        for nn in s.findall("nonNodule"):
            locus = nn.find("locus")
            sess.non_nodules.append(NonNodule(
                i, _text(nn.find("nonNoduleID")), _num(nn.find("imageZposition"), name, "imageZposition"),
                _text(nn.find("imageSOP_UID")),
                int(round(_num(locus.find("xCoord") if locus is not None else None, name, "locus xCoord"))),
                int(round(_num(locus.find("yCoord") if locus is not None else None, name, "locus yCoord")))))
        sessions.append(sess)
    return LidcRead(source=name, version=_text(header.find("Version")) if header is not None else "",
                    series_uid=series, study_uid=_text(header.find("StudyInstanceUID")) if header is not None else "",
                    sessions=sessions)


def read_series_uid(path: str | Path) -> tuple[str, str] | None:
    """(root kind, SeriesInstanceUid) from the header only, stopping early; None if not an LIDC/IDRI read."""
    kind, uid = None, ""
    try:
        for event, el in ET.iterparse(str(path), events=("start", "end")):
            tag = _local(el.tag)
            if event == "start" and kind is None:
                kind = tag
                if tag not in ("LidcReadMessage", "IdriReadMessage"):
                    return None
            if event == "end" and tag in ("SeriesInstanceUid", "SeriesInstanceUID"):
                uid = _text(el)
                break
            if event == "end" and tag == "ResponseHeader":
                break
    except ET.ParseError as err:
        raise InputError(path, f"not well-formed XML ({err})") from err
    return (kind, uid) if kind else None
