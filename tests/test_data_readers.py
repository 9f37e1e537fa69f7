"""Media loading, readers (MMEB train/eval, video, ViDoRe, generic), bad-input handling, mixture sampling."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from btoks.data.media import (
    BROKEN_PDF,
    CORRUPT_IMAGE,
    MISSING,
    PATH_ESCAPE,
    TOO_LARGE,
    UNREADABLE_VIDEO,
    InputError,
    MediaConfig,
    PdfPage,
    load_image,
    load_video,
    natural_key,
    render_pdf,
    render_pdf_page,
    resolve_path,
    uniform_indices,
)
from btoks.data.mixture import MixtureSampler
from btoks.data.readers import (
    ConcatTrainSets,
    EvalGlobal,
    EvalLocal,
    LazySamples,
    SampleSpec,
    TrainPair,
    iter_table,
    make_spec,
    read_eval,
    read_eval_local,
    read_train,
    read_visdoc,
)
from btoks.data.sample import IMAGE_TOKEN, VIDEO_TOKEN, Sample

# ---------------------------------------------------------------- fixture writers


def png(path: Path, color: tuple[int, int, int] = (255, 0, 0), size: tuple[int, int] = (8, 6),
        mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color if mode == "RGB" else (*color, 0)).save(path)
    return path


def png_bytes(color: tuple[int, int, int] = (0, 0, 255), size: tuple[int, int] = (5, 5)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def mp4(path: Path, n: int = 20, size: int = 32) -> Path:
    """Frame i is uniform gray level 10 * i."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), 10 * i, np.uint8), format="rgb24")
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def pdf(path: Path, pages: int = 2) -> Path:
    import pypdfium2 as pdfium

    path.parent.mkdir(parents=True, exist_ok=True)
    doc = pdfium.PdfDocument.new()
    for i in range(pages):
        doc.new_page(100 + 50 * i, 200)
    doc.save(str(path))
    doc.close()
    return path


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def parquet(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def frames_dir(path: Path, n: int) -> Path:
    """Frames named f1.png ... fN.png (natural order differs from lexical), frame i has red level 20 * i."""
    for i in range(1, n + 1):
        png(path / f"f{i}.png", (20 * i, 0, 0))
    return path


# ---------------------------------------------------------------- media


def test_load_image_variants(tmp_path: Path) -> None:
    p = png(tmp_path / "a.png", (10, 20, 30))
    img = load_image("a.png", tmp_path)
    assert img.mode == "RGB" and img.size == (8, 6) and img.getpixel((0, 0)) == (10, 20, 30)
    assert load_image(p.read_bytes()).getpixel((0, 0)) == (10, 20, 30)
    assert load_image({"bytes": p.read_bytes(), "path": None}).size == (8, 6)
    assert load_image({"bytes": None, "path": "a.png"}, tmp_path).size == (8, 6)
    # transparent pixels land on white, not black
    png(tmp_path / "t.png", (0, 0, 0), mode="RGBA")
    assert load_image("t.png", tmp_path).getpixel((0, 0)) == (255, 255, 255)


def test_image_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nope.png") as e:
        load_image("nope.png", tmp_path)
    assert e.value.reason == MISSING
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    with pytest.raises(InputError, match=r"bad.png") as e:
        load_image("bad.png", tmp_path)
    assert e.value.reason == CORRUPT_IMAGE
    # valid header, truncated data: passes the header check, fails on decode
    good = png(tmp_path / "big.png", (1, 2, 3), size=(64, 64)).read_bytes()
    (tmp_path / "trunc.png").write_bytes(good[: len(good) // 2])
    MediaConfig(root=tmp_path).check_image("trunc.png", "header")
    with pytest.raises(InputError, match=r"trunc.png") as e:
        MediaConfig(root=tmp_path).check_image("trunc.png", "full")
    assert e.value.reason == CORRUPT_IMAGE


def test_decompression_bomb_refused_from_header(tmp_path: Path) -> None:
    png(tmp_path / "wide.png", size=(40, 30))
    with pytest.raises(InputError, match=r"wide.png.*1,200 pixels exceeds the limit of 1,000") as e:
        load_image("wide.png", tmp_path, max_pixels=1000)
    assert e.value.reason == TOO_LARGE
    with pytest.raises(InputError) as e:
        MediaConfig(root=tmp_path, max_pixels=1000).check_image("wide.png", "header")
    assert e.value.reason == TOO_LARGE
    assert load_image("wide.png", tmp_path, max_pixels=None).size == (40, 30)


def test_paths_cannot_escape_root(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    png(tmp_path / "secret.png")
    with pytest.raises(InputError, match="escapes") as e:
        load_image("../secret.png", root)
    assert e.value.reason == PATH_ESCAPE
    with pytest.raises(InputError):
        resolve_path("sub/../../secret.png", root)
    assert resolve_path("sub/../x.png", root) == (root / "x.png").resolve()
    with pytest.raises(InputError, match="absolute path outside") as e:  # a table row naming any file
        load_image(str(tmp_path / "secret.png"), root)
    assert e.value.reason == PATH_ESCAPE
    png(root / "inside.png")
    assert resolve_path(root / "inside.png", root) == (root / "inside.png").resolve()  # absolute, inside: fine
    (root / "link.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(InputError, match="escapes"):
        load_image("link.png", root)


def test_uniform_indices_and_natural_sort() -> None:
    assert uniform_indices(12, 4) == [1, 4, 7, 10]
    assert uniform_indices(8, 8) == list(range(8))
    assert uniform_indices(3, 6) == [0, 0, 1, 1, 2, 2]  # short videos repeat frames
    assert uniform_indices(0, 4) == []
    assert sorted(["f10.png", "f2.png", "f1.png"], key=natural_key) == ["f1.png", "f2.png", "f10.png"]


def test_video_from_frame_folder_uses_natural_order(tmp_path: Path) -> None:
    frames_dir(tmp_path / "clip", 12)
    frames = load_video("clip", tmp_path, num_frames=4)
    assert [f.getpixel((0, 0))[0] for f in frames] == [40, 100, 160, 220]  # f2, f5, f8, f11
    assert len(load_video("clip", tmp_path)) == 8


def test_video_file_pyav(tmp_path: Path) -> None:
    mp4(tmp_path / "v.mp4", n=20)
    frames = load_video("v.mp4", tmp_path, num_frames=4)
    assert len(frames) == 4 and all(f.mode == "RGB" and f.size == (32, 32) for f in frames)
    levels = [float(np.asarray(f).mean()) for f in frames]
    for got, want in zip(levels, [20, 70, 120, 170], strict=True):  # frames 2, 7, 12, 17 (lossy codec)
        assert abs(got - want) < 8


def test_video_errors(tmp_path: Path) -> None:
    (tmp_path / "junk.mp4").write_bytes(b"\x00" * 200)
    with pytest.raises(InputError, match=r"junk.mp4") as e:
        load_video("junk.mp4", tmp_path)
    assert e.value.reason == UNREADABLE_VIDEO
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty") as e:
        load_video("empty", tmp_path)
    assert e.value.reason == UNREADABLE_VIDEO
    with pytest.raises(InputError) as e:
        load_video("missing.mp4", tmp_path)
    assert e.value.reason == MISSING


def test_pdf_render_and_errors(tmp_path: Path) -> None:
    pdf(tmp_path / "doc.pdf", pages=2)
    pages = render_pdf("doc.pdf", tmp_path, scale=2.0)
    assert [p.size for p in pages] == [(200, 400), (300, 400)] and pages[0].mode == "RGB"
    assert render_pdf_page("doc.pdf", 1, tmp_path).size == (150, 200)
    assert load_image(PdfPage("doc.pdf", 0), tmp_path).size == (100, 200)
    with pytest.raises(InputError, match="page 5 out of range"):
        render_pdf_page("doc.pdf", 5, tmp_path)
    with pytest.raises(InputError, match=r"doc.pdf page 0.*exceeds"):
        render_pdf_page("doc.pdf", 0, tmp_path, max_pixels=1000)
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4 garbage")
    with pytest.raises(InputError, match=r"broken.pdf") as e:
        render_pdf("broken.pdf", tmp_path)
    assert e.value.reason == BROKEN_PDF


# ---------------------------------------------------------------- tables and specs


def test_iter_table_formats(tmp_path: Path) -> None:
    rows = [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]
    assert list(iter_table(jsonl(tmp_path / "t.jsonl", rows))) == rows
    assert list(iter_table(parquet(tmp_path / "t.parquet", rows))) == rows
    (tmp_path / "t.tsv").write_text("a\tb\n1\tx\n2\ty\n")
    assert list(iter_table(tmp_path / "t.tsv")) == [{"a": "1", "b": "x"}, {"a": "2", "b": "y"}]
    shards = tmp_path / "shards"
    parquet(shards / "test-00001.parquet", rows[1:])
    parquet(shards / "test-00000.parquet", rows[:1])
    assert list(iter_table(shards)) == rows
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n{oops\n')
    with pytest.raises(ValueError, match="line 2"):
        list(iter_table(tmp_path / "bad.jsonl"))


def test_make_spec_markers() -> None:
    s = make_spec(text="<|image_1|>\nWhat is this?", images=["a.png"])
    assert s.text == f"{IMAGE_TOKEN}\nWhat is this?" and s.images == ("a.png",)
    assert make_spec(text="<|image_1|> caption", images=[""]).text == "caption"  # no image: marker dropped
    assert make_spec(text="<|video_1|> clip", video="v.mp4").text == f"{VIDEO_TOKEN} clip"
    assert make_spec(text=" <|image_1|> ").is_empty
    assert not make_spec(images=["a.png"]).is_empty


# ---------------------------------------------------------------- MMEB train


def _train_rows() -> list[dict]:
    return [
        {"qry": "<|image_1|>\nRepresent the given image for classification", "qry_image_path": "img/a.png",
         "pos_text": "cat", "pos_image_path": "", "neg_text": "", "neg_image_path": ""},
        {"qry": "Find me an everyday image that matches the given caption: a dog", "qry_image_path": "",
         "pos_text": "<|image_1|>\nRepresent the given image.", "pos_image_path": "img/b.png",
         "neg_text": "<|image_1|>", "neg_image_path": "img/a.png"},
    ]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_read_mmeb_train(tmp_path: Path, fmt: str) -> None:
    png(tmp_path / "img/a.png", (255, 0, 0))
    png(tmp_path / "img/b.png", (0, 255, 0))
    path = (jsonl if fmt == "jsonl" else parquet)(tmp_path / f"ImageNet_1K.{fmt}", _train_rows())
    ts = read_train(path, ntp_side="positive")
    assert ts.name == "ImageNet_1K" and len(ts) == 2 and not ts.skipped
    pair = ts[0]
    assert isinstance(pair, TrainPair) and pair.dataset == "ImageNet_1K"
    assert pair.query.text == f"{IMAGE_TOKEN}\nRepresent the given image for classification"
    assert len(pair.query.images) == 1 and pair.query.images[0].getpixel((0, 0)) == (255, 0, 0)
    assert pair.positive.text == "cat" and pair.positive.images == [] and pair.negative is None
    assert pair.query.target == "cat"
    second = ts[1]
    assert second.positive.images[0].getpixel((0, 0)) == (0, 255, 0)
    assert second.negative is not None and second.negative.text == IMAGE_TOKEN
    assert second.query.target == "Represent the given image."  # markers stripped, text kept as is
    # ntp_side="query": the candidate generates the query text
    ts_q = read_train(path, ntp_side="query")
    assert ts_q.specs[1].positive.target == "Find me an everyday image that matches the given caption: a dog"


def test_train_target_from_positive_text_with_marker(tmp_path: Path) -> None:
    png(tmp_path / "a.png")
    path = jsonl(tmp_path / "t.jsonl", [{"qry": "q", "qry_image_path": "", "pos_text": "<|image_1|> a dog",
                                         "pos_image_path": "a.png"}])
    assert read_train(path, ntp_side="positive").specs[0].query.target == "a dog"
    assert read_train(path, ntp_side="none").specs[0].query.target is None


def test_train_bad_rows_raise_or_skip(tmp_path: Path) -> None:
    png(tmp_path / "img/a.png")
    (tmp_path / "img/corrupt.png").write_bytes(b"garbage")
    rows = [
        {"qry": "ok", "qry_image_path": "img/a.png", "pos_text": "x", "pos_image_path": ""},
        {"qry": "missing", "qry_image_path": "img/missing.png", "pos_text": "x", "pos_image_path": ""},
        {"qry": "", "qry_image_path": "", "pos_text": "x", "pos_image_path": ""},
        {"qry": "corrupt", "qry_image_path": "", "pos_text": "", "pos_image_path": "img/corrupt.png"},
        {"no_columns": 1},
    ]
    path = jsonl(tmp_path / "mix.jsonl", rows)
    with pytest.raises(InputError) as e:
        read_train(path)
    msg = str(e.value)
    assert "mix" in msg and "row 1" in msg and "missing.png" in msg and e.value.reason == MISSING
    ts = read_train(path, on_error="skip")
    assert len(ts) == 1
    assert ts.skipped.as_dict() == {"bad_row": 1, "corrupt_image": 1, "empty": 1, "missing_file": 1}
    assert ts.skipped.total == 4 and any("row 3" in m and "corrupt.png" in m for m in ts.skipped.examples)


def test_lazy_decode_error_names_row_and_file(tmp_path: Path) -> None:
    good = png(tmp_path / "img.png", size=(64, 64)).read_bytes()
    path = jsonl(tmp_path / "t.jsonl", [{"qry": "q", "qry_image_path": "img.png", "pos_text": "p"}])
    ts = read_train(path, check="header")
    (tmp_path / "img.png").write_bytes(good[:40])  # file breaks after reading
    with pytest.raises(InputError, match=r"t: row 0: .*img.png"):
        ts[0]


def test_generic_train_format(tmp_path: Path) -> None:
    png(tmp_path / "s.png")
    path = jsonl(tmp_path / "mine.jsonl", [
        {"query": {"instruction": "Find an image:", "text": "a red square"},
         "positive": {"instruction": "Represent the given image.", "images": ["s.png"]}},
        {"query": {"image": "s.png", "text": "<image> What shape?"}, "positive": "square", "negative": "circle"},
    ])
    ts = read_train(path, ntp_side="both")
    p0, p1 = ts[0], ts[1]
    assert p0.query.prompt == "Find an image: a red square" and len(p0.positive.images) == 1
    assert p0.positive.target == "a red square"
    assert p1.query.text == "<image> What shape?" and p1.negative is not None and p1.negative.text == "circle"
    assert p1.query.target == "square" and p1.positive.target == "What shape?"


# ---------------------------------------------------------------- MMEB eval (local)


def _eval_rows() -> list[dict]:
    return [
        {"qry_inst": "<|image_1|> Represent the given image for classification", "qry_text": "",
         "qry_img_path": "q/0.png", "tgt_inst": ["", "", ""], "tgt_text": ["cat", "dog", "bird"], "tgt_img_path": ["", "", ""]},
        {"qry_inst": "<|image_1|> Represent the given image for classification", "qry_text": "",
         "qry_img_path": "q/1.png", "tgt_inst": ["", "", ""], "tgt_text": ["dog", "bird", "cat"], "tgt_img_path": ["", "", ""]},
        {"qry_inst": "Find me an everyday image that matches the given caption:", "qry_text": "a cat",
         "qry_img_path": "", "tgt_inst": ["Represent the given image", "Represent the given image"],
         "tgt_text": ["<|image_1|>", "<|image_1|>"], "tgt_img_path": ["c/0.png", "c/1.png"]},
    ]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_read_eval_local_and_dedup(tmp_path: Path, fmt: str) -> None:
    png(tmp_path / "q/0.png", (1, 1, 1))
    png(tmp_path / "q/1.png", (2, 2, 2))
    png(tmp_path / "c/0.png", (3, 3, 3))
    png(tmp_path / "c/1.png", (4, 4, 4))
    path = (jsonl if fmt == "jsonl" else parquet)(tmp_path / f"ev.{fmt}", _eval_rows())
    ev = read_eval_local(path, dataset="ImageNet-1K")
    assert isinstance(ev, EvalLocal) and len(ev) == 3 and ev.rows == [0, 1, 2]
    q0 = ev.queries[0]
    assert isinstance(q0, Sample) and q0.instruction == f"{IMAGE_TOKEN} Represent the given image for classification"
    assert q0.images[0].getpixel((0, 0)) == (1, 1, 1)
    assert [c.text for c in ev.candidates[1]] == ["dog", "bird", "cat"]
    assert ev.candidates[2][1].images[0].getpixel((0, 0)) == (4, 4, 4)
    unique, idx, _ = ev.dedup_candidates()
    assert isinstance(unique, LazySamples) and len(unique) == 5  # cat, dog, bird, c/0, c/1
    for row, ids in enumerate(idx):
        assert [unique.specs[i].key() for i in ids] == [s.key() for s in ev.candidates[row].specs]
    assert idx[0].tolist() == [0, 1, 2] and idx[1].tolist() == [1, 2, 0] and idx[2].tolist() == [3, 4]
    # interning: identical candidates share one spec object
    assert ev.candidates[0].specs[0] is ev.candidates[1].specs[2]


def test_eval_local_bad_rows(tmp_path: Path) -> None:
    png(tmp_path / "ok.png")
    png(tmp_path / "huge.png", size=(50, 50))
    (tmp_path / "corrupt.png").write_bytes(b"nope")
    base = {"qry_inst": "", "qry_text": "q", "qry_img_path": "", "tgt_inst": ""}
    rows = [
        {**base, "tgt_text": ["a", "b"], "tgt_img_path": ["ok.png", ""]},
        {**base, "tgt_text": ["a", "b"], "tgt_img_path": ["ok.png", "corrupt.png"]},
        {**base, "tgt_text": ["a", "b"], "tgt_img_path": ["huge.png", ""]},
        {**base, "tgt_text": ["a", ""], "tgt_img_path": ["", ""]},
        {**base, "tgt_text": ["a", "b"], "tgt_img_path": ["x.png"]},
    ]
    path = jsonl(tmp_path / "set.jsonl", rows)
    media = MediaConfig(max_pixels=1000)
    with pytest.raises(InputError, match=r"set: row 1: .*corrupt.png"):
        read_eval_local(path, media=media)
    ev = read_eval_local(path, media=media, on_error="skip")
    assert ev.rows == [0]
    assert ev.skipped.as_dict() == {"bad_row": 1, "corrupt_image": 1, "empty": 1, "too_large": 1}


def test_eval_local_video_variant(tmp_path: Path) -> None:
    frames_dir(tmp_path / "frames/q0", 10)
    mp4(tmp_path / "clips/c1.mp4", n=12)
    frames_dir(tmp_path / "frames/c0", 3)
    (tmp_path / "clips/bad.mp4").write_bytes(b"\x01" * 100)
    rows = [
        {"qry_inst": "<|video_1|> Recognize the category of the video content.", "qry_text": "",
         "qry_img_path": "", "qry_video_path": "frames/q0", "tgt_inst": "", "tgt_text": ["run", "swim"],
         "tgt_img_path": ["", ""], "tgt_video_path": ["", ""]},
        {"qry_inst": "Find a video that contains the following visual content:", "qry_text": "a ball",
         "qry_img_path": "", "qry_video_path": "", "tgt_inst": "Understand the content of the provided video.",
         "tgt_text": ["", ""], "tgt_img_path": ["", ""], "tgt_video_path": ["frames/c0", "clips/c1.mp4"]},
        {"qry_inst": "", "qry_text": "x", "qry_img_path": "", "qry_video_path": "clips/bad.mp4",
         "tgt_inst": "", "tgt_text": ["a"], "tgt_img_path": [""], "tgt_video_path": [""]},
    ]
    path = jsonl(tmp_path / "vid.jsonl", rows)
    with pytest.raises(InputError, match=r"vid: row 2: .*bad.mp4") as e:
        read_eval_local(path)
    assert e.value.reason == UNREADABLE_VIDEO
    ev = read_eval_local(path, on_error="skip", media=MediaConfig(num_frames=4))
    assert len(ev) == 2 and ev.skipped.as_dict() == {"unreadable_video": 1}
    q = ev.queries[0]
    assert q.instruction.startswith(VIDEO_TOKEN) and q.video is not None and len(q.video) == 4
    c0, c1 = ev.candidates[1][0], ev.candidates[1][1]
    assert c0.video is not None and len(c0.video) == 4 and c1.video is not None and len(c1.video) == 4
    assert c1.instruction == "Understand the content of the provided video."


def test_eval_instruction_fill_and_override(tmp_path: Path) -> None:
    rows = [
        {"qry_inst": "", "qry_text": "a cat", "tgt_text": ["x", "y"]},
        {"qry_inst": "Row inst:", "qry_text": "a dog", "tgt_text": ["x", "y"]},
        {"qry_text": "Find an image: a bird", "tgt_text": ["x", "y"]},  # MMEB-V1 style inline instruction
    ]
    path = jsonl(tmp_path / "i.jsonl", rows)
    ev = read_eval_local(path, query_instruction="Find an image:", target_instruction="Represent:")
    assert [s.instruction for s in ev.queries.specs] == ["Find an image:", "Row inst:", ""]
    assert ev.candidates[0].specs[0].instruction == "Represent:"
    ev = read_eval_local(path, query_instruction="Q:", override_instructions=True)
    assert [s.instruction for s in ev.queries.specs] == ["Q:", "Q:", "Q:"]


def test_generic_eval_local(tmp_path: Path) -> None:
    png(tmp_path / "s.png")
    path = jsonl(tmp_path / "g.jsonl", [
        {"id": "q7", "query": {"images": ["s.png"], "instruction": "Classify"}, "candidates": ["circle", "square"]},
    ])
    ev = read_eval_local(path)
    assert ev.queries[0].id == "q7" and len(ev.queries[0].images) == 1
    assert [c.text for c in ev.candidates[0]] == ["circle", "square"]


# ---------------------------------------------------------------- visual documents (global)


def _visdoc(folder: Path) -> Path:
    png(folder / "pages/d3.png", (9, 9, 9))
    pdf(folder / "docs/report.pdf", pages=2)
    (folder / "docs/broken.pdf").write_bytes(b"%PDF-1.7 broken")
    jsonl(folder / "queries.jsonl", [
        {"query-id": "q1", "query": "revenue 2020", "language": "english"},
        {"query-id": "q2", "query": "chiffre d'affaires", "language": "french"},
        {"query-id": "q3", "query": "only the broken page", "language": "english"},
        {"query-id": "q4", "query": "no judgement", "language": "english"},
    ])
    parquet(folder / "corpus.parquet", [
        {"corpus-id": "d1", "image": {"bytes": png_bytes((1, 2, 3)), "path": None}, "pdf": None, "page": None},
        {"corpus-id": "d2", "image": None, "pdf": "docs/report.pdf", "page": 1},
        {"corpus-id": "d3", "image": {"bytes": None, "path": "pages/d3.png"}, "pdf": None, "page": None},
        {"corpus-id": "d4", "image": None, "pdf": "docs/broken.pdf", "page": 0},
    ])
    (folder / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td2\t2\nq1\td1\t1\nq1\td3\t0\n"
                                      "q2\td3\t1\nq3\td4\t1\n")
    return folder


def test_read_visdoc(tmp_path: Path) -> None:
    folder = _visdoc(tmp_path / "ViDoRe_test")
    with pytest.raises(InputError, match=r"ViDoRe_test: row corpus 3: .*broken.pdf") as e:
        read_visdoc(folder)
    assert e.value.reason == BROKEN_PDF
    ev = read_visdoc(folder, on_error="skip", query_instruction="Find a document image that matches the given query:",
                     target_instruction="Understand the content of the provided document image.")
    assert isinstance(ev, EvalGlobal)
    # reference order: each query's relevant pages (qrels order), then the rest of the corpus
    assert ev.corpus_ids == ["d2", "d1", "d3"] and ev.query_ids == ["q1", "q2"]
    assert ev.skipped.as_dict() == {"broken_pdf": 1, "no_qrels": 2}  # q3 lost its only page; q4 has none
    assert ev.qrels == {"q1": {"d2": 2.0, "d1": 1.0}, "q2": {"d3": 1.0}}  # grade 0 is non-relevant
    pages = [ev.corpus[ev.corpus_ids.index(c)] for c in ("d1", "d2", "d3")]
    assert pages[0].images[0].getpixel((0, 0)) == (1, 2, 3)
    assert pages[1].images[0].size == (150, 200)  # page 1 of the PDF at 72 dpi
    assert pages[2].images[0].getpixel((0, 0)) == (9, 9, 9)
    assert pages[0].instruction == "Understand the content of the provided document image."
    assert ev.queries[0].prompt == "Find a document image that matches the given query: revenue 2020"
    fr = read_visdoc(folder, on_error="skip", language="french")
    assert fr.query_ids == ["q2"] and fr.n_filtered == 3


def test_read_eval_from_manifest_spec(tmp_path: Path) -> None:
    from btoks.eval import registry

    png(tmp_path / "data/cls/q.png")
    jsonl(tmp_path / "data/cls/test.jsonl", [{"query": {"images": ["q.png"]}, "candidates": ["a", "b"]}])
    _visdoc(tmp_path / "data/docs")
    (tmp_path / "data/manifest.json").write_text(json.dumps({"datasets": [
        {"name": "tst-cls", "modality": "image", "meta_task": "classification", "metric": "hit@1",
         "query_instruction": "Classify", "format": "local", "path": "cls"},
        {"name": "tst-docs", "modality": "visdoc", "meta_task": "visdoc", "metric": "ndcg@5", "path": "docs"},
    ]}))
    specs = registry.load_manifest(tmp_path / "data")
    try:
        local = read_eval(specs[0], tmp_path)
        assert isinstance(local, EvalLocal) and local.queries.specs[0].instruction == "Classify"
        glob = read_eval(specs[1], tmp_path, on_error="skip")
        assert isinstance(glob, EvalGlobal) and glob.dataset == "tst-docs" and len(glob.corpus) == 3
    finally:
        for s in specs:
            registry.unregister(s.name)


# ---------------------------------------------------------------- mixture sampling


def _collect(s: MixtureSampler) -> list[list[int]]:
    return [list(b) for b in s]


def test_mixture_sampler_one_dataset_per_batch_and_deterministic() -> None:
    sizes = {"a": 10, "b": 7, "c": 25}
    s1 = MixtureSampler(sizes, 3, seed=1, num_batches=60)
    batches = _collect(s1)
    assert len(batches) == 60 == len(s1)
    bounds = {"a": (0, 10), "b": (10, 17), "c": (17, 42)}
    for i, b in enumerate(batches):
        name = MixtureSampler(sizes, 3, seed=1).dataset_at(i)
        lo, hi = bounds[name]
        assert len(b) == 3 and all(lo <= x < hi for x in b)
    assert _collect(MixtureSampler(sizes, 3, seed=1, num_batches=60)) == batches
    assert _collect(MixtureSampler(sizes, 3, seed=2, num_batches=60)) != batches


def test_mixture_sampler_epochs_cover_each_dataset() -> None:
    s = MixtureSampler({"a": 9, "b": 6}, 3, weights={"a": 1.0, "b": 0.0}, num_batches=6)
    batches = _collect(s)
    first, second = sorted(x for b in batches[:3] for x in b), sorted(x for b in batches[3:] for x in b)
    assert first == list(range(9)) and second == list(range(9))  # each pass is a permutation of "a"
    assert batches[:3] != batches[3:]  # reshuffled per pass
    # default nominal epoch length = sum of full batches per dataset
    assert len(MixtureSampler({"a": 10, "b": 7}, 3)) == 3 + 2
    # a dataset smaller than the batch yields its whole permutation
    assert sorted(_collect(MixtureSampler({"tiny": 2}, 4, num_batches=1))[0]) == [0, 1]


def test_mixture_sampler_weights() -> None:
    s = MixtureSampler({"a": 100, "b": 100}, 2, weights={"a": 3, "b": 1}, seed=0, num_batches=4000)
    frac_a = np.mean([s.dataset_at(i) == "a" for i in range(4000)])
    assert 0.72 < frac_a < 0.78
    with pytest.raises(ValueError, match="missing"):
        MixtureSampler({"a": 1, "b": 1}, 1, weights={"a": 1})


def test_mixture_sampler_exact_resume() -> None:
    sizes = {"a": 11, "b": 5, "c": 30}
    full = _collect(MixtureSampler(sizes, 4, seed=7, num_batches=50))
    s = MixtureSampler(sizes, 4, seed=7, num_batches=50)
    it = iter(s)
    head = [next(it) for _ in range(17)]
    state = json.loads(json.dumps(s.state_dict()))  # JSON round trip, as a checkpoint would do
    resumed = MixtureSampler(sizes, 4, seed=7, num_batches=50)
    resumed.load_state_dict(state)
    assert head + _collect(resumed) == full
    # explicit consumed-step override (DataLoader prefetch runs the sampler ahead)
    r2 = MixtureSampler(sizes, 4, seed=7, num_batches=50)
    r2.load_state_dict(s.state_dict(step=10))
    assert _collect(r2) == full[10:]
    with pytest.raises(ValueError, match="sizes"):
        MixtureSampler({**sizes, "c": 31}, 4, seed=7).load_state_dict(state)
    with pytest.raises(ValueError, match="seed"):
        MixtureSampler(sizes, 4, seed=8).load_state_dict(state)


def test_mixture_sampler_block_boundary_resume() -> None:
    sizes = {"a": 13, "b": 17}
    n = MixtureSampler.BLOCK + 20
    full = _collect(MixtureSampler(sizes, 2, seed=3, num_batches=n))
    r = MixtureSampler(sizes, 2, seed=3, num_batches=n)
    r.load_state_dict({**r.state_dict(), "step": MixtureSampler.BLOCK + 5})
    assert _collect(r) == full[MixtureSampler.BLOCK + 5:]


def test_concat_train_sets(tmp_path: Path) -> None:
    a = read_train(jsonl(tmp_path / "a.jsonl", [{"query": f"a{i}", "positive": "p"} for i in range(4)]))
    b = read_train(jsonl(tmp_path / "b.jsonl", [{"query": f"b{i}", "positive": "p"} for i in range(3)]))
    cat = ConcatTrainSets([a, b])
    assert len(cat) == 7 and cat.sizes == {"a": 4, "b": 3}
    assert cat[5].query.text == "b1" and cat[5].dataset == "b"
    sampler = cat.sampler(2, seed=0, num_batches=5)
    for batch in sampler:
        assert len({cat[i].dataset for i in batch}) == 1
    with pytest.raises(IndexError):
        cat[7]


def test_sample_spec_key_hashes_bytes() -> None:
    a = SampleSpec(text="x", images=(png_bytes((1, 1, 1)),))
    b = SampleSpec(text="x", images=(png_bytes((1, 1, 1)),))
    c = SampleSpec(text="x", images=(png_bytes((2, 1, 1)),))
    assert a.key() == b.key() != c.key()


def test_ntp_target_column_overrides_derived_target(tmp_path):
    rows = [{"qry": "Find a video showing: a red ball", "pos_text": "Understand the video.", "ntp_target": "a red ball"},
            {"qry": "<|image_1|> Represent the image", "pos_text": "a cat", "ntp_target": ""}]
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    by_query = read_train(path, ntp_side="query", check="none")
    assert by_query[0].positive.target == "a red ball" and by_query[0].query.target is None
    assert by_query[1].positive.target == "Represent the image"  # empty column: derived from the query text
    by_positive = read_train(path, ntp_side="positive", check="none")
    assert by_positive[0].query.target == "a red ball" and by_positive[1].query.target == "a cat"
