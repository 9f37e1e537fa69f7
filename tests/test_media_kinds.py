"""One vocabulary of media kinds: readers, ``encode`` and ``btoks index`` agree on what a file is."""

from __future__ import annotations

from pathlib import Path

import pytest

from btoks.data.media import IMAGE_EXTENSIONS, KNOWN_EXTENSIONS, VIDEO_EXTENSIONS, kind_of
from btoks.encode import parse_input
from btoks.serve.index import discover, modality_of


@pytest.mark.parametrize(("name", "kind"), [
    ("a.PNG", "image"), ("b.gif", "image"), ("c.tif", "image"), ("d.tiff", "image"), ("e.webp", "image"),
    ("f.m4v", "video"), ("g.MP4", "video"), ("h.pdf", "pdf"), ("i.md", "text"), ("j.xyz", None), ("noext", None),
])
def test_kind_of(name: str, kind: str | None) -> None:
    assert kind_of(name) == kind
    assert (Path(name).suffix.lower() in KNOWN_EXTENSIONS) == (kind is not None)


def test_index_and_encode_accept_the_same_files(tmp_path: Path) -> None:
    """btoks index used to skip .gif/.tif/.tiff/.m4v files that encode accepted."""
    for ext in sorted(IMAGE_EXTENSIONS | VIDEO_EXTENSIONS):
        (tmp_path / f"x{ext}").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "skip.xyz").write_bytes(b"")
    found = {p.name for p in discover([tmp_path])}
    assert found == {f"x{e}" for e in IMAGE_EXTENSIONS | VIDEO_EXTENSIONS} | {"notes.txt"}
    for p in sorted(tmp_path.iterdir()):
        if p.name in found:
            item = parse_input(p, 0)  # encode classifies it the same way (no pixels decoded here)
            kind = modality_of(p)
            assert (kind == "image") == bool(item.images) and (kind == "video") == (item.video is not None)
