"""Hostile inputs as a suite: what a careful attacker or a user re-running commands would try (issue 14).

Bad media through every entry point, symlinks and path escapes, oversized and malformed requests, slow
clients, and a bounded concurrent load test against a real ``btoks serve`` process on 127.0.0.1.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import pytest
from PIL import EpsImagePlugin, Image

from btoks.data.media import MediaError, load_image, load_video, reduce_factor
from btoks.data.sample import Sample

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"


def _png_bytes(size: tuple[int, int], color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------- decoding


def test_big_images_are_decoded_within_the_pixel_budget(tmp_path: Path) -> None:
    """A 2048² PNG with a 256²-pixel budget is box-reduced at decode; a JPEG uses draft mode (DCT scaling)."""
    (tmp_path / "big.png").write_bytes(_png_bytes((2048, 2048)))
    Image.new("RGB", (2048, 1536), (10, 200, 30)).save(tmp_path / "big.jpg", quality=90)
    img = load_image("big.png", tmp_path, decode_pixels=256 * 256)
    assert img.size == (256, 256) and img.mode == "RGB" and img.getpixel((5, 5)) == (200, 30, 30)
    jpg = load_image("big.jpg", tmp_path, decode_pixels=256 * 256)
    assert jpg.size[0] * jpg.size[1] >= 256 * 256 and jpg.size[0] <= 512  # never below the budget
    assert load_image("big.png", tmp_path).size == (2048, 2048)  # no budget: full size
    assert reduce_factor((4096, 4096), 28 * 28 * 1280) == 4  # 1024² still covers Qwen-VL's 1 MP budget
    assert reduce_factor((4000, 300), 1000) == 1  # the short side stays >= MIN_DECODE_EDGE
    assert reduce_factor((100, 100), None) == 1


def test_video_frames_are_decoded_within_the_budget(tmp_path: Path) -> None:
    from _serve_helpers import write_video

    clip = write_video(tmp_path / "clip.mp4", frames=4, size=(640, 512))
    frames = load_video(clip, num_frames=2, decode_pixels=256 * 256)
    assert [f.size for f in frames] == [(320, 256)] * 2


def test_local_paths_only_reach_whitelisted_pil_plugins(tmp_path: Path, monkeypatch) -> None:
    """An EPS file named .png must not reach the EPS plugin (which shells out to Ghostscript)."""
    tried = []
    monkeypatch.setattr(EpsImagePlugin, "_accept", lambda prefix: tried.append(prefix) or False)
    (tmp_path / "evil.png").write_bytes(EPS)
    with pytest.raises(MediaError, match=r"evil.png: cannot decode image \(not a readable PNG, JPEG"):
        load_image("evil.png", tmp_path)
    with pytest.raises(MediaError, match="cannot decode image"):
        load_image(EPS)
    assert not tried


def test_decoding_does_not_re_arm_warnings(tmp_path: Path) -> None:
    """``warnings.catch_warnings()`` around every decode reset the once-per-location registry, so a library
    FutureWarning printed at every training step; now it prints once."""
    (tmp_path / "a.png").write_bytes(_png_bytes((8, 8)))

    def library_call() -> None:
        warnings.warn("deprecated thing", FutureWarning, stacklevel=1)

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")
        for _ in range(3):
            library_call()
            load_image("a.png", tmp_path)
    assert len([w for w in seen if "deprecated thing" in str(w.message)]) == 1


def test_sample_with_a_path_instead_of_an_image_is_an_input_error() -> None:
    with pytest.raises(ValueError, match=r"Sample.images\[0\] must be a decoded PIL image, got str 'path.png'"):
        Sample(images=["path.png"])
    with pytest.raises(ValueError, match=r"Sample.video\[1\]"):
        Sample(video=[Image.new("RGB", (4, 4)), b"x"])


# ---------------------------------------------------------------------------------------------- index


def test_index_never_follows_a_symlink_out_of_the_folder(tmp_path: Path) -> None:
    from btoks.serve.index import discover

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwd.txt").write_text("root:x:0:0:root:/root:/bin/bash")
    (outside / "dir").mkdir()
    (outside / "dir" / "secret.md").write_text("secret")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "ok.txt").write_text("fine")
    (docs / "alias.txt").symlink_to(docs / "ok.txt")  # inside: allowed (deduplicated)
    (docs / "leak.txt").symlink_to(outside / "passwd.txt")
    (docs / "linkdir").symlink_to(outside / "dir")
    assert discover([docs]) == [(docs / "ok.txt").resolve()]


def test_chunk_overlap_must_be_smaller_than_the_chunk() -> None:
    from btoks.serve.index import check_chunking

    check_chunking(100, 99)
    check_chunking(None, 0)
    for overlap in (100, 500, -1):
        with pytest.raises(ValueError, match="chunk overlap must be"):
            check_chunking(100, overlap)
