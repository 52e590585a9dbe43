"""extract_tar: the same files out, and the same members refused, with and without tar's "data" filter."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from monai_pipeline.errors import InputError
from monai_pipeline.io.paths import extract_tar


def _archive(path: Path, names: list[str], link: str | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name in names:
            data = f"content of {name}".encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo(link)
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tf.addfile(info)
    return path


@pytest.fixture(params=["data_filter", "fallback"])
def mode(request, monkeypatch):
    if request.param == "fallback":
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    elif not hasattr(tarfile, "data_filter"):
        pytest.skip("this Python has no tar data filter")
    return request.param


def test_extracts_every_member_or_the_chosen_ones(tmp_path, mode):
    arc = _archive(tmp_path / "a.tar.gz", ["x/one.xml", "x/y/two.xml"])
    with tarfile.open(arc) as tf:
        extract_tar(tf, tmp_path / "all")
    assert (tmp_path / "all/x/y/two.xml").read_text() == "content of x/y/two.xml"
    with tarfile.open(arc) as tf:
        extract_tar(tf, tmp_path / "some", [tf.getmember("x/one.xml")])
    assert sorted(p.name for p in (tmp_path / "some").rglob("*.xml")) == ["one.xml"]


@pytest.mark.parametrize("names,link", [(["ok.xml", "../evil.xml"], None), (["ok.xml"], "x/escape")])
def test_refuses_paths_outside_and_outward_links_writing_nothing(tmp_path, mode, names, link):
    arc = _archive(tmp_path / "bad.tar.gz", names, link)
    out = tmp_path / "out" / "inner"
    with tarfile.open(arc) as tf, pytest.raises(InputError, match="refused"):
        extract_tar(tf, out)
    assert not (tmp_path / "out" / "evil.xml").exists()
    assert not out.exists() or not any(out.rglob("*"))  # checked before anything is written
