"""btoks.encode: input kinds, bucketing keeps order, normalisation, shapes, errors that name the input."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from _serve_helpers import color_image, tiny_model, write_pdf, write_video

from btoks import Sample
from btoks.data.media import load_video, render_pdf_page
from btoks.encode import InputError, encode, encode_document, encode_items, encode_query


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("encode-media")
    color_image(1).save(d / "a.png")
    (d / "t.txt").write_text("a man rides a bicycle along the river")
    return {
        "png": d / "a.png",
        "pdf": write_pdf(d / "doc.pdf", 2),
        "mp4": write_video(d / "clip.mp4"),
        "txt": d / "t.txt",
        "dir": d,
    }


def _png_bytes(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def test_bucketing_preserves_order(model, media) -> None:
    frames = [color_image(i, (56, 56)) for i in range(4)]
    inputs = [
        "short",
        "a much longer text about the stock market and the central bank " * 6,
        color_image(2),
        {"text": "what color is the shape?", "image": color_image(3, (90, 70))},
        "the quick brown fox",
        [*frames],
        media["png"],
        {"pdf": media["pdf"], "page": 1},
        Sample(text="handwritten digit seven", instruction="Represent the given image"),
        "mid length text: a photo of a cat sitting on a red sofa",
        _png_bytes(color_image(5)),
    ]
    batched = encode(model, inputs, batch_size=3)
    one_by_one = np.stack([encode(model, [x])[0] for x in inputs])
    assert batched.shape == (len(inputs), 64)
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    # and the rows really are different inputs in the given order (not, say, all identical)
    assert np.abs(batched[0] - batched[1]).max() > 1e-3


def test_normalisation(model) -> None:
    texts = ["a circle", "a square and a triangle", "left right up down"]
    emb = encode(model, texts)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    raw = encode(model, texts, normalize=False)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-3)
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), emb, atol=1e-5)
    assert model.config.normalize  # the temporary switch was undone


def test_single_vs_list_shapes_and_types(model) -> None:
    one = encode(model, "hello")
    assert isinstance(one, np.ndarray) and one.shape == (64,) and one.dtype == np.float32
    many = encode(model, ["hello", "world"])
    assert many.shape == (2, 64)
    np.testing.assert_allclose(many[0], one, atol=1e-5)
    t = encode(model, ("hello",), convert_to="torch")
    assert isinstance(t, torch.Tensor) and t.shape == (1, 64)
    assert encode(model, []).shape == (0, 64)
    np.testing.assert_allclose(model.encode("hello"), one, atol=1e-6)  # BToksModel.encode delegates


def test_image_inputs_agree(model, media) -> None:
    from PIL import Image

    pil = Image.open(media["png"]).convert("RGB")
    emb = encode(
        model,
        [
            pil,
            media["png"],
            media["png"].read_bytes(),
            {"image": str(media["png"])},
            {"image": {"bytes": media["png"].read_bytes(), "path": "x.png"}},
        ],
    )
    for row in emb[1:]:
        np.testing.assert_allclose(row, emb[0], atol=1e-5)


def test_pdf_video_text_file_and_combined_inputs(model, media) -> None:
    page1 = render_pdf_page(media["pdf"], 1)
    np.testing.assert_allclose(
        encode(model, {"pdf": str(media["pdf"]), "page": 1}), encode(model, page1), atol=1e-5
    )
    np.testing.assert_allclose(
        encode(model, media["pdf"]), encode(model, render_pdf_page(media["pdf"], 0)), atol=1e-5
    )
    frames = load_video(media["mp4"], num_frames=4)
    np.testing.assert_allclose(
        encode(model, {"video": media["mp4"], "frames": 4}), encode(model, [frames])[0], atol=1e-5
    )
    assert encode(model, media["mp4"]).shape == (64,)
    np.testing.assert_allclose(
        encode(model, media["txt"]), encode(model, media["txt"].read_text()), atol=1e-5
    )
    both = encode(model, {"text": "what is shown?", "image": media["png"]})
    assert not np.allclose(both, encode(model, media["png"]), atol=1e-3)


def test_instructions(model) -> None:
    q = encode_query(model, "a cat", instruction="Find an image that matches the given caption:")
    np.testing.assert_allclose(
        q, encode(model, "Find an image that matches the given caption: a cat"), atol=1e-5
    )
    np.testing.assert_allclose(encode_document(model, "a cat"), encode(model, "a cat"), atol=1e-5)
    model.config.extra["query_instruction"] = "Retrieve:"
    try:
        np.testing.assert_allclose(encode_query(model, "a cat"), encode(model, "Retrieve: a cat"), atol=1e-5)
    finally:
        model.config.extra.pop("query_instruction")


def test_strings_are_never_paths(model, media) -> None:
    emb = encode(model, str(media["png"]))  # a str is text, even when such a file exists
    assert not np.allclose(emb, encode(model, media["png"]), atol=1e-3)


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        (3, "unsupported input type int"),
        ("", "empty text"),
        (Path("/no/such/file.png"), "file not found"),
        (Path("notes.docx"), "unsupported file type"),
        ({"txt": "typo"}, "unknown key"),
        ({"pdf": "x.pdf", "page": -1}, "page"),
        ([1, 2], "nested list"),
        (b"not an image", "cannot decode"),
    ],
)
def test_errors_name_the_input(model, bad, fragment) -> None:
    with pytest.raises(InputError, match=rf"^input 2: .*{fragment}") as info:
        encode(model, ["fine", "also fine", bad, "never reached"])
    assert info.value.index == 2


def test_pdf_page_out_of_range_and_skip_mode(model, media) -> None:
    with pytest.raises(InputError, match=r"input 1: .*out of range"):
        encode(model, ["ok", {"pdf": media["pdf"], "page": 9}])
    res = encode_items(model, ["ok", b"junk", "fine"], on_error="skip", batch_size=2)
    assert set(res.errors) == {1} and res.tokens[0] > 0 and res.tokens[1] == 0
    np.testing.assert_allclose(res.embeddings[2].numpy(), encode(model, "fine"), atol=1e-5)
