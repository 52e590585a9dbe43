"""Parsing the real TCIA LIDC XML: every file of the archive, and hand-checked counts for named files."""

from __future__ import annotations

import collections
import tarfile

import pytest

from monai_pipeline.errors import InputError
from monai_pipeline.lidc.xml import parse_read, read_series_uid
from tests.conftest import SHARED

LIDC = SHARED / "lidc"
SAMPLES = LIDC / "samples"
pytestmark = pytest.mark.skipif(not LIDC.is_dir(), reason="../shared/lidc not present")


def test_whole_archive_parses_with_published_totals():
    totals: collections.Counter = collections.Counter()
    versions: collections.Counter = collections.Counter()
    ct, radiograph = 0, 0
    series = collections.Counter()
    with tarfile.open(LIDC / "tcia-lidc-xml.tar.xz", "r:xz") as tar:
        for m in tar:
            if not (m.isfile() and m.name.endswith(".xml")):
                continue
            read = parse_read(tar.extractfile(m))
            if read is None:
                radiograph += 1
                continue
            ct += 1
            totals.update(read.counts())
            versions[read.version] += 1
            series[read.series_uid] += 1
    # figures measured over the archive (shared/lidc/README.md), reproduced by this parser
    assert (ct, radiograph) == (1035, 283)
    assert len(series) == 1018
    assert versions == {"1.8": 710, "1.8.1": 226, "1.7": 99}
    assert totals["nodule_reads"] == 20362
    assert totals["with_characteristics"] == 7032
    assert totals["small"] == 13328 + 2  # single points without characteristics + 2 all-zero single points
    assert totals["rois"] == 55475 and totals["exclusion_rois"] == 1013
    assert totals["non_nodules"] == 21787


# counted by hand in each file (grep for <readingSession>, <unblindedReadNodule>, <characteristics>, <roi>,
# <inclusion>FALSE, <nonNodule>, and reads whose rois hold a single edge-map point)
PINNED = {
    "185_069.xml": dict(sessions=4, nodule_reads=13, with_characteristics=4, small=9, rois=41, exclusion_rois=0,
                        non_nodules=13),
    "187_023.xml": dict(sessions=4, nodule_reads=4, with_characteristics=4, small=0, rois=8, exclusion_rois=0,
                        non_nodules=1),
    "188_259.xml": dict(sessions=4, nodule_reads=12, with_characteristics=6, small=6, rois=16, exclusion_rois=1,
                        non_nodules=7),
    "157_162.xml": dict(sessions=4, nodule_reads=20, with_characteristics=6, small=14, rois=29, exclusion_rois=0,
                        non_nodules=16),
    "189_142.xml": dict(sessions=4, nodule_reads=0, with_characteristics=0, small=0, rois=0, exclusion_rois=0,
                        non_nodules=1),
    "189_110.xml": dict(sessions=3, nodule_reads=11, with_characteristics=3, small=8, rois=33, exclusion_rois=0,
                        non_nodules=28),
    "188_011.xml": dict(sessions=8, nodule_reads=20, with_characteristics=4, small=16, rois=27, exclusion_rois=0,
                        non_nodules=64),
    "187_044.xml": dict(sessions=4, nodule_reads=39, with_characteristics=17, small=21, rois=115, exclusion_rois=3,
                        non_nodules=7),
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_pinned_counts(name):
    assert parse_read(SAMPLES / name).counts() == PINNED[name]


def test_format_details():
    old = parse_read(SAMPLES / "157_162.xml")
    assert old.version == "1.7" and {s.radiologist_id for s in old.sessions} == {"anonymous"}
    first = parse_read(SAMPLES / "185_069.xml")
    assert first.series_uid == "1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192"
    assert first.version == "1.8.1"
    zero = [n for n in parse_read(SAMPLES / "188_264.xml").nodule_reads
            if n.characteristics and not any(n.characteristics.values())]
    assert len(zero) == 1 and zero[0].is_small
    no_chars = [n for n in parse_read(SAMPLES / "187_044.xml").nodule_reads if not n.characteristics and not n.is_small]
    assert len(no_chars) == 1 and len({r.z for r in no_chars[0].rois}) > 1
    assert parse_read(SAMPLES / "185_068.xml") is None  # IdriReadMessage
    a, b = parse_read(SAMPLES / "188_082.xml"), parse_read(SAMPLES / "188_083.xml")
    assert a.series_uid == b.series_uid and a.counts() == b.counts()
    assert read_series_uid(SAMPLES / "188_082.xml") == ("LidcReadMessage", a.series_uid)
    assert read_series_uid(SAMPLES / "185_068.xml")[0] == "IdriReadMessage"


def test_without_namespace_and_with_spaces(tmp_path):
    text = (SAMPLES / "187_023.xml").read_text().replace(' xmlns="http://www.nih.gov"', "")
    text = text.replace("<imageZposition>-85.0</imageZposition>", "<imageZposition> -85.000000  </imageZposition>")
    p = tmp_path / "plain.xml"
    p.write_text(text)
    read = parse_read(p)
    assert read.counts() == PINNED["187_023.xml"]
    assert -85.0 in {r.z for n in read.nodule_reads for r in n.rois}


def test_malformed_xml_names_file(tmp_path):
    p = tmp_path / "broken.xml"
    p.write_text("<LidcReadMessage><ResponseHeader>")
    with pytest.raises(InputError, match="broken.xml: not well-formed XML"):
        parse_read(p)
    q = tmp_path / "badnum.xml"
    q.write_text("<LidcReadMessage><readingSession><unblindedReadNodule><noduleID>7</noduleID><roi>"
                 "<imageZposition>abc</imageZposition></roi></unblindedReadNodule></readingSession></LidcReadMessage>")
    with pytest.raises(InputError, match="reading session 1, nodule 7: imageZposition must be a number"):
        parse_read(q)
