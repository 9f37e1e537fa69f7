"""sentence-transformers style encoding: any mix of texts, images, videos, PDF pages and Samples → vectors.

``encode`` accepts one input or a list of them and always returns embeddings in input order. Inputs are parsed
cheaply first (no pixels decoded), sorted by an estimated token length so each batch holds inputs of similar
length (left padding is wasted compute), and decoded one batch at a time so a large list never holds all its
pixels in memory. Every error names the index of the input that caused it.

Accepted inputs (a list is always a *batch*; a list nested inside it is one video's frames):

- ``str``: text. A string is never opened as a file, so untrusted text cannot make the encoder read files.
- ``pathlib.Path``: a file chosen by suffix (image, video, ``.pdf`` = page 0, ``.txt``/``.md`` = text) or a
  folder of video frames.
- ``bytes``: an encoded image. ``PIL.Image.Image``: an image. ``list[PIL.Image.Image]``: a video's frames.
- ``dict`` with keys ``text``, ``instruction``, ``image``, ``images``, ``video``, ``pdf``, ``page``,
  ``frames``, ``id``: a combination, e.g. ``{"text": "q", "image": "a.png"}`` or
  ``{"pdf": "doc.pdf", "page": 3}``. In a dict, a string under a media key is a path.
- :class:`~btoks.data.sample.Sample`: used as is.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from btoks.data.errors import ENCODE_FAILED, InputError
from btoks.data.media import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_NUM_FRAMES,
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    PdfPage,
    image_header_size,
    kind_of,
    load_image,
    load_video,
    pdf_page_size,
)
from btoks.data.sample import Sample

if TYPE_CHECKING:
    from btoks.model import BToksModel

DICT_KEYS = frozenset({"text", "instruction", "image", "images", "video", "pdf", "page", "frames", "id"})
MAX_TEXT_FILE_CHARS = 1_000_000
"""A text file is read up to this many characters (the model truncates to ``max_length`` tokens anyway)."""

ConvertTo = Literal["numpy", "torch"]


"""Errors name the input's position (``err.index``); the one error type of :mod:`btoks.data.errors`."""


def _at(index: int, err: Exception, reason: str | None = None) -> InputError:
    """``err`` as an :class:`InputError` located at input ``index``."""
    if isinstance(err, InputError):
        return err.at(index=index)
    return InputError(str(err), index=index, reason=reason or getattr(err, "reason", "bad_input"))


@dataclass
class EncodeOptions:
    """How media inside inputs are decoded (``max_pixels`` guards against decompression bombs)."""

    num_frames: int = DEFAULT_NUM_FRAMES
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    pdf_scale: float = 1.0
    decode_pixels: int | None = None
    """Shrink bigger images while decoding (memory); ``None``: the model's own image budget."""


@dataclass
class _Item:
    """One parsed input: what to load (not yet decoded) and a cheap token-length estimate for bucketing."""

    index: int
    text: str = ""
    text_file: Path | None = None
    instruction: str = ""
    images: list[Any] = field(default_factory=list)  # PIL images or media.ImageSource (decoded lazily)
    video: Any = None  # list of PIL frames, or a path (file or frame folder)
    frames: int | None = None
    id: str = ""
    sample: Sample | None = None
    length: int = 0


@dataclass
class EncodeResult:
    """Output of :func:`encode_items`: one row per input (zeros where ``errors`` has the index)."""

    embeddings: torch.Tensor
    errors: dict[int, InputError]
    tokens: list[int]
    """Input tokens per input (text + vision placeholders, BToks excluded); 0 for failed inputs."""


# ---------------------------------------------------------------------------------------------------- parsing


def _is_frames(x: Any) -> bool:
    return isinstance(x, list | tuple) and len(x) > 0 and all(isinstance(f, Image.Image) for f in x)


def _path_item(item: _Item, path: Path) -> None:
    kind = kind_of(path)
    if path.is_dir():
        item.video = path
    elif kind == "image":
        item.images.append(path)
    elif kind == "video":
        item.video = path
    elif kind == "pdf":
        item.images.append(PdfPage(str(path), 0))
    elif kind == "text":
        if not path.is_file():
            raise ValueError(f"{path}: file not found")
        item.text_file = path
    else:
        raise ValueError(
            f"{path}: unsupported file type {path.suffix.lower() or '(no suffix)'!r} (images: "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))}; videos: {', '.join(sorted(VIDEO_EXTENSIONS))}; "
            ".pdf; .txt/.md)"
        )


def _image_source(x: Any, key: str) -> Any:
    if isinstance(x, Image.Image | bytes | bytearray | PdfPage):
        return x
    if isinstance(x, str | Path):
        return Path(x)
    if isinstance(x, dict) and ("bytes" in x or "path" in x):  # Hugging Face datasets image dict
        return x
    raise ValueError(
        f"{key!r} must be a PIL image, a path, image bytes or a {{'bytes', 'path'}} dict, "
        f"got {type(x).__name__}"
    )


def _dict_item(item: _Item, d: dict[str, Any]) -> None:
    unknown = sorted(set(d) - DICT_KEYS)
    if unknown:
        raise ValueError(
            f"unknown key(s) {', '.join(map(repr, unknown))}; expected {', '.join(sorted(DICT_KEYS))}"
        )
    text = d.get("text") or ""
    if not isinstance(text, str):
        raise ValueError(f"'text' must be a string, got {type(text).__name__}")
    item.text = text
    if d.get("instruction"):
        item.instruction = str(d["instruction"])
    if d.get("id") is not None:
        item.id = str(d["id"])
    if d.get("image") is not None:
        item.images.append(_image_source(d["image"], "image"))
    for img in d.get("images") or []:
        item.images.append(_image_source(img, "images"))
    if d.get("pdf") is not None:
        page = d.get("page", 0)
        if isinstance(page, bool) or not isinstance(page, int) or page < 0:
            raise ValueError(f"'page' must be a 0-based page number, got {page!r}")
        item.images.append(PdfPage(str(d["pdf"]), page))
    elif d.get("page") is not None:
        raise ValueError("'page' given without 'pdf'")
    video = d.get("video")
    if video is not None:
        if _is_frames(video):
            item.video = list(video)
        elif isinstance(video, str | Path):
            item.video = Path(video)
        else:
            raise ValueError(
                "'video' must be a path (file or frame folder) or a non-empty list of PIL frames"
            )
    if d.get("frames") is not None:
        frames = d["frames"]
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
            raise ValueError(f"'frames' must be a positive integer, got {frames!r}")
        item.frames = frames
    if not (item.text or item.images or item.video is not None):
        raise ValueError("dict input has no text, image, video or pdf")


def parse_input(x: Any, index: int, instruction: str | None = None) -> _Item:
    """Classify one input without decoding pixels; raises :class:`InputError` naming ``index``."""
    item = _Item(index=index, id=str(index))
    try:
        if isinstance(x, Sample):
            sample = x
            if instruction and not sample.instruction:
                sample = Sample(
                    sample.text, instruction, list(sample.images), sample.video, sample.id, sample.target
                )
            item.sample = sample
            return item
        if isinstance(x, str):
            if not x.strip():
                raise ValueError("empty text")
            item.text = x
        elif isinstance(x, Path):
            _path_item(item, x)
        elif isinstance(x, bytes | bytearray | memoryview):
            item.images.append(bytes(x))
        elif isinstance(x, Image.Image):
            item.images.append(x)
        elif _is_frames(x):
            item.video = list(x)
        elif isinstance(x, dict):
            _dict_item(item, x)
        elif isinstance(x, list | tuple):
            raise ValueError("a nested list must be a non-empty list of PIL frames (one video)")
        else:
            raise ValueError(
                f"unsupported input type {type(x).__name__} (expected str, Path, bytes, PIL image, "
                "list of frames, dict or Sample)"
            )
    except (ValueError, TypeError, OSError) as e:
        raise _at(index, e) from e
    if instruction and not item.instruction:
        item.instruction = instruction
    return item


# ------------------------------------------------------------------------------------------ length estimate


def _image_tokens(model: BToksModel, wh: tuple[float, float]) -> int:
    return model.backbone.image_token_estimate(*wh)


def decode_budget(model: BToksModel) -> int:
    """Pixels the model resizes an image to at most: decoding more only costs memory."""
    return model.backbone.max_image_pixels


def _estimate(item: _Item, model: BToksModel, opts: EncodeOptions) -> int:
    """Cheap token-count estimate (headers only): text ≈ 4 characters a token, images by pixel budget."""
    if item.sample is not None:
        s = item.sample
        n = len(s.prompt) // 4 + sum(_image_tokens(model, im.size) for im in s.images)
        if s.video:
            n += _image_tokens(model, s.video[0].size) * math.ceil(len(s.video) / 2)
        return n
    n = len(item.instruction) // 4 + len(item.text) // 4
    if item.text_file is not None:
        n += min(item.text_file.stat().st_size // 4, model.config.max_length)
    for src in item.images:
        if isinstance(src, Image.Image):
            wh: tuple[float, float] = src.size
        elif isinstance(src, PdfPage):
            w, h = pdf_page_size(src.path, src.page)
            wh = (w * opts.pdf_scale, h * opts.pdf_scale)
        else:
            wh = image_header_size(src)  # also fails early (with the index) on missing or corrupt files
        n += _image_tokens(model, wh)
    if item.video is not None:
        frames = len(item.video) if isinstance(item.video, list) else (item.frames or opts.num_frames)
        frame_wh = item.video[0].size if isinstance(item.video, list) else (448, 448)
        n += _image_tokens(model, frame_wh) * math.ceil(frames / 2)
    return min(n, model.config.max_length * 4)


# ---------------------------------------------------------------------------------------------------- loading


def _load(item: _Item, opts: EncodeOptions) -> Sample:
    """Decode the media of one parsed input into a Sample (pixel caps enforced by btoks.data.media)."""
    if item.sample is not None:
        return item.sample
    try:
        text = item.text
        if item.text_file is not None:
            with item.text_file.open(encoding="utf-8", errors="replace") as f:
                body = f.read(MAX_TEXT_FILE_CHARS)
            text = f"{text} {body}" if text else body
            if not text.strip():
                raise ValueError(f"{item.text_file}: text file is empty")
        images = [
            src
            if isinstance(src, Image.Image)
            else load_image(src, max_pixels=opts.max_pixels, pdf_scale=opts.pdf_scale,
                            decode_pixels=opts.decode_pixels)
            for src in item.images
        ]
        images = [im if im.mode == "RGB" else im.convert("RGB") for im in images]
        video = item.video
        if isinstance(video, Path):
            video = load_video(video, num_frames=item.frames or opts.num_frames, max_pixels=opts.max_pixels,
                               decode_pixels=opts.decode_pixels)
        elif isinstance(video, list):
            if opts.max_pixels is not None and video[0].size[0] * video[0].size[1] > opts.max_pixels:
                raise InputError(
                    f"video frames of {video[0].size[0]}x{video[0].size[1]} exceed the pixel limit "
                    f"of {opts.max_pixels:,}",
                    reason="too_large",
                )
            video = [f if f.mode == "RGB" else f.convert("RGB") for f in video]
    except (ValueError, OSError) as e:
        raise _at(item.index, e) from e
    return Sample(text=text, instruction=item.instruction, images=images, video=video, id=item.id)


# ---------------------------------------------------------------------------------------------------- running


@contextmanager
def _eval_mode(model: BToksModel) -> Iterator[None]:
    """Encode in eval mode (no dropout), restoring training mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


def _run(model: BToksModel, samples: list[Sample]) -> tuple[torch.Tensor, list[int]]:
    inputs = model.prepare(samples)
    tokens = (inputs.attention_mask.sum(1) - model.config.num_btoks).clamp(min=0).tolist()
    with torch.inference_mode():
        emb = model(inputs.to(model.device)).pooled
    return emb.float().cpu(), [int(t) for t in tokens]


def _hidden_size(model: BToksModel) -> int:
    cfg = model.backbone.model.config
    text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return int(text_cfg.hidden_size)


def encode_items(
    model: BToksModel,
    inputs: Sequence[Any],
    *,
    batch_size: int = 32,
    show_progress_bar: bool | None = None,
    normalize: bool = True,
    instruction: str | None = None,
    on_error: Literal["raise", "skip"] = "raise",
    options: EncodeOptions | None = None,
) -> EncodeResult:
    """The engine behind :func:`encode`, for callers that must survive bad inputs (index builds, the server).

    With ``on_error="skip"`` a failing input gets a zero row and an entry in ``errors``; the rest of its batch
    is re-run one by one, so one corrupt file costs one batch of extra compute, not the whole job.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    opts = options or EncodeOptions()
    n = len(inputs)
    out = torch.zeros((n, _hidden_size(model)), dtype=torch.float32)
    tokens = [0] * n
    errors: dict[int, InputError] = {}

    def fail(err: InputError) -> None:
        if on_error == "raise":
            raise err
        errors[err.index] = err

    if opts.decode_pixels is None:
        opts = replace(opts, decode_pixels=decode_budget(model))
    items: list[_Item] = []
    for i, x in enumerate(inputs):
        try:
            item = parse_input(x, i, instruction)
            try:
                item.length = _estimate(item, model, opts)
            except (ValueError, OSError) as e:
                raise _at(i, e) from e
            items.append(item)
        except InputError as e:
            fail(e)
    # Longest first (a memory problem shows up in the first batch, not after an hour); stable for ties.
    items.sort(key=lambda it: -it.length)
    if show_progress_bar is None:
        show_progress_bar = len(items) > batch_size and sys.stderr.isatty()
    from tqdm.auto import tqdm

    with (
        _eval_mode(model),
        tqdm(total=n, desc="Encoding", unit="input", disable=not show_progress_bar) as bar,
    ):
        bar.update(n - len(items))
        for start in range(0, len(items), batch_size):
            batch = items[start : start + batch_size]
            loaded: list[tuple[_Item, Sample]] = []
            for item in batch:
                try:
                    loaded.append((item, _load(item, opts)))
                except InputError as e:
                    fail(e)
            if loaded:
                try:
                    emb, tok = _run(model, [s for _, s in loaded])
                    results = [(it, emb[j], tok[j]) for j, (it, _) in enumerate(loaded)]
                except (ValueError, RuntimeError, IndexError, TypeError) as batch_err:
                    if len(loaded) == 1:
                        fail(_at(loaded[0][0].index, batch_err, ENCODE_FAILED))
                        results = []
                    else:  # find the culprit(s): one by one
                        results = []
                        for it, s in loaded:
                            try:
                                e1, t1 = _run(model, [s])
                                results.append((it, e1[0], t1[0]))
                            except (ValueError, RuntimeError, IndexError, TypeError) as e:
                                fail(_at(it.index, e, ENCODE_FAILED))
                for it, vec, t in results:
                    out[it.index] = vec
                    tokens[it.index] = t
            bar.update(len(batch))
    if normalize:
        ok = torch.ones(n, dtype=torch.bool)
        ok[list(errors)] = False
        out[ok] = F.normalize(out[ok], dim=-1)
    return EncodeResult(out, errors, tokens)


def _is_single(inputs: Any) -> bool:
    return not isinstance(inputs, list | tuple)


def encode(
    model: BToksModel,
    inputs: Any,
    batch_size: int = 32,
    show_progress_bar: bool | None = None,
    normalize: bool = True,
    convert_to: ConvertTo = "numpy",
    instruction: str | None = None,
    *,
    num_frames: int = DEFAULT_NUM_FRAMES,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    pdf_scale: float = 1.0,
) -> np.ndarray | torch.Tensor:
    """Embed one input (→ 1-D) or a list of inputs (→ 2-D, input order) as float32 on the CPU.

    ``normalize=True`` L2-normalises (dot product = cosine); ``False`` returns the raw pooled state.
    ``instruction`` is prepended to every input that has none (VLM2Vec style). ``show_progress_bar=None``
    shows a tqdm bar when there is more than one batch and stderr is a terminal. A list is always a batch:
    encode a single video given as frames with ``[frames]`` or ``{"video": frames}``.
    """
    if convert_to not in ("numpy", "torch"):
        raise ValueError(f"convert_to must be 'numpy' or 'torch', got {convert_to!r}")
    single = _is_single(inputs)
    batch = [inputs] if single else list(inputs)
    opts = EncodeOptions(num_frames=num_frames, max_pixels=max_pixels, pdf_scale=pdf_scale)
    result = encode_items(
        model,
        batch,
        batch_size=batch_size,
        show_progress_bar=show_progress_bar,
        normalize=normalize,
        instruction=instruction,
        on_error="raise",
        options=opts,
    )
    emb = result.embeddings[0] if single else result.embeddings
    return emb.numpy() if convert_to == "numpy" else emb


def _config_instruction(model: BToksModel, key: str) -> str | None:
    value = (model.config.extra or {}).get(key)
    return str(value) if value else None


def encode_query(model: BToksModel, inputs: Any, instruction: str | None = None, **kwargs: Any) -> Any:
    """Encode queries; ``instruction`` defaults to ``model.config.extra["query_instruction"]`` when set.

    Queries and documents may need different instructions (the paper gives the task to the query side);
    keeping the default in the saved config means a served model and its index agree without extra flags.
    """
    return encode(
        model, inputs, instruction=instruction or _config_instruction(model, "query_instruction"), **kwargs
    )


def encode_document(model: BToksModel, inputs: Any, instruction: str | None = None, **kwargs: Any) -> Any:
    """Encode documents; ``instruction`` defaults to ``model.config.extra["document_instruction"]``."""
    return encode(
        model, inputs, instruction=instruction or _config_instruction(model, "document_instruction"), **kwargs
    )


__all__ = [
    "EncodeOptions",
    "EncodeResult",
    "InputError",
    "encode",
    "encode_document",
    "encode_items",
    "encode_query",
    "parse_input",
]
