"""Image / video / PDF loading with errors that name the file.

Everything a reader decodes goes through here, so one place enforces the rules that keep a long evaluation from
dying (or silently degrading) on one bad file: paths stay inside the data root, the pixel count is checked from
the header *before* decoding (decompression bombs), and every failure is a :class:`InputError` that carries the
file and a short machine-readable ``reason`` that skip counters can group by.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from btoks.data.errors import (
    BROKEN_PDF,
    CORRUPT_IMAGE,
    MISSING,
    PATH_ESCAPE,
    TOO_LARGE,
    UNREADABLE_VIDEO,
    InputError,
)

DEFAULT_MAX_PIXELS = 64_000_000
"""Largest image (width x height) decoded by default; bigger headers are refused before decoding."""
DEFAULT_DECODE_PIXELS = 4 * 28 * 28 * 1280
"""Decode budget when the caller does not know its model's: 4x the paper's Qwen-VL image budget (~4 MP)."""
MIN_DECODE_EDGE = 256
"""A reduced image keeps at least this shorter side (fixed-resolution towers resize to a 224-px square)."""
DEFAULT_NUM_FRAMES = 8
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
"""PIL plugins we let open anything (paths, bytes, data URLs); the rest (EPS, PSD, ...) are refused."""

# One vocabulary of media kinds, by file suffix, shared by readers, ``encode`` and ``btoks index``.
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"})
PDF_EXTENSIONS = frozenset({".pdf"})
TEXT_EXTENSIONS = frozenset({".txt", ".md"})
MEDIA_KINDS: dict[str, frozenset[str]] = {
    "image": IMAGE_EXTENSIONS, "video": VIDEO_EXTENSIONS, "pdf": PDF_EXTENSIONS, "text": TEXT_EXTENSIONS,
}
KNOWN_EXTENSIONS = frozenset().union(*MEDIA_KINDS.values())

"""Media failures are :class:`~btoks.data.errors.InputError` (the one error type for unusable inputs)."""


def kind_of(path: str | Path) -> str | None:
    """``image``, ``video``, ``pdf`` or ``text`` from the file suffix (case-insensitive); ``None`` if unknown.
    A folder is not classified here (a frame folder is a video only where a caller expects one)."""
    suffix = Path(path).suffix.lower()
    return next((kind for kind, exts in MEDIA_KINDS.items() if suffix in exts), None)


@dataclass(frozen=True)
class PdfPage:
    """A reference to one page (0-based) of a PDF, used wherever an image source is accepted."""

    path: str
    page: int = 0


ImageSource = str | Path | bytes | PdfPage | dict
"""A path (relative to the root), raw encoded bytes, a PDF page, or a Hugging Face image dict
(``{"bytes": ..., "path": ...}``)."""


def resolve_path(path: str | Path, root: str | Path | None = None) -> Path:
    """Resolve ``path`` inside ``root``; a path that leaves the root (absolute, ``..``, symlinks) is refused.

    A data table is input like any other: its rows must not name ``/etc/passwd`` or climb out of the folder
    the user pointed at. Without a ``root`` (a path the caller typed itself) the path is taken as given.
    """
    p = Path(path)
    if root is None:
        return p
    base = Path(root).resolve()
    full = (base / p).resolve()  # an absolute ``p`` replaces ``base``: allowed only if it lies inside it
    if not full.is_relative_to(base):
        what = "absolute path outside" if p.is_absolute() else "path escapes"
        raise InputError(f"{path}: {what} the data root {base}", path=path, reason=PATH_ESCAPE)
    return full


def natural_key(name: str) -> list[Any]:
    """Sort key that orders ``frame_2`` before ``frame_10``."""
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", name)]


FRAME_SAMPLING = ("uniform", "linspace")


def uniform_indices(total: int, n: int, mode: str = "uniform") -> list[int]:
    """``n`` indices spread over ``range(total)``: segment centres (``uniform``), or first to last frame
    inclusive (``linspace``, how the MMEB-V2 reference harness picks frames from a frame folder).

    When ``total < n`` indices repeat, so every video yields exactly ``n`` frames: backbones that group frames
    in temporal patches (Qwen-VL uses pairs) and batching both prefer a fixed count.
    """
    if total <= 0 or n <= 0:
        return []
    if mode == "linspace" and total >= n:
        return np.linspace(0, total - 1, n).astype(int).tolist()
    if mode not in FRAME_SAMPLING:
        raise ValueError(f"frame sampling must be one of {FRAME_SAMPLING}, not {mode!r}")
    return [min(total - 1, int(x)) for x in (np.arange(n) + 0.5) * total / n]


def _check_pixels(size: tuple[int, int], max_pixels: int | None, name: str) -> None:
    if max_pixels is not None and size[0] * size[1] > max_pixels:
        raise InputError(
            f"{name}: {size[0]}x{size[1]} = {size[0] * size[1]:,} pixels exceeds the limit of {max_pixels:,} "
            "(possible decompression bomb; raise max_pixels if the file is trusted)",
            path=name,
            reason=TOO_LARGE,
        )


@contextlib.contextmanager
def _image_errors(name: str) -> Iterator[None]:
    """Map PIL's failures (bomb guard, missing file, undecodable data) to one ``InputError`` naming the file.

    No ``warnings.catch_warnings()`` here: entering it resets Python's once-per-location registry, so every
    image decoded would re-print unrelated warnings (a FutureWarning at each training step).
    """
    try:
        yield
    except InputError:
        raise
    except Image.DecompressionBombError as e:
        raise InputError(f"{name}: {e}", path=name, reason=TOO_LARGE) from e
    except FileNotFoundError as e:
        raise InputError(f"{name}: file not found", path=name, reason=MISSING) from e
    except Image.UnidentifiedImageError as e:
        raise InputError(f"{name}: cannot decode image (not a readable {', '.join(IMAGE_FORMATS)} file)",
                         path=name, reason=CORRUPT_IMAGE) from e
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise InputError(f"{name}: cannot decode image ({e})", path=name, reason=CORRUPT_IMAGE) from e


def reduce_factor(size: tuple[int, int], decode_pixels: int | None) -> int:
    """Largest integer shrink that keeps ``decode_pixels`` pixels and a ``MIN_DECODE_EDGE`` shorter side.

    The model resizes to at most ``decode_pixels`` anyway, so decoding bigger only costs memory; staying at or
    above the budget keeps the model's own resize the one that sets the final size.
    """
    if not decode_pixels:
        return 1
    w, h = size
    by_area = math.isqrt(max(w * h // decode_pixels, 1))
    return max(1, min(by_area, min(w, h) // MIN_DECODE_EDGE))


def _open_image(fp: Any, name: str, max_pixels: int | None, decode_pixels: int | None = None) -> Image.Image:
    """Open lazily (whitelisted formats only), check the header size, decode within the pixel budget, to RGB.

    JPEGs decode straight at a reduced scale (draft mode); other formats are box-reduced right after decoding,
    so the full-size buffer lives only for the duration of this call.
    """
    with _image_errors(name):
        img = Image.open(fp, formats=IMAGE_FORMATS)
        out = img
        try:
            _check_pixels(img.size, max_pixels, name)
            factor = reduce_factor(img.size, decode_pixels)
            if factor > 1 and img.format in ("JPEG", "MPO"):
                img.draft("RGB", (img.size[0] // factor, img.size[1] // factor))
                factor = reduce_factor(img.size, decode_pixels)
            img.load()
            out = _to_rgb(img)
            if factor > 1:
                out = out.reduce(factor)
        finally:
            if out is not img:  # release the full-size decode (and its file) now, not at garbage collection
                img.close()
    return out


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB with transparent areas on white (documents and logos with alpha turn black otherwise)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    return img.convert("RGB")


def image_header_size(src: ImageSource, root: str | Path | None = None) -> tuple[int, int]:
    """Width/height from the header only (cheap validation without decoding)."""
    if isinstance(src, PdfPage):
        w, h = pdf_page_size(src.path, src.page, root=root)
        return round(w), round(h)
    fp, name = _image_fp(src, root)
    with _image_errors(name), Image.open(fp, formats=IMAGE_FORMATS) as img:
        return img.size


def _image_fp(src: ImageSource, root: str | Path | None) -> tuple[Any, str]:
    """A file object or path PIL can open, plus a human-readable name for errors."""
    if isinstance(src, dict):
        if src.get("bytes"):
            return io.BytesIO(src["bytes"]), str(src.get("path") or "<image bytes>")
        if src.get("path"):
            src = src["path"]
        else:
            raise InputError("<image dict>: neither 'bytes' nor 'path' is set", reason=MISSING)
    if isinstance(src, bytes | bytearray):
        return io.BytesIO(bytes(src)), "<image bytes>"
    path = resolve_path(src, root)
    if not path.is_file():
        raise InputError(f"{path}: file not found", path=path, reason=MISSING)
    return path, str(path)


def load_image(
    src: ImageSource,
    root: str | Path | None = None,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    pdf_scale: float = 1.0,
    decode_pixels: int | None = None,
) -> Image.Image:
    """Decode one image (path, bytes, HF image dict or :class:`PdfPage`) to RGB.

    ``max_pixels`` refuses bigger headers; ``decode_pixels`` (the model's image budget) shrinks bigger images
    by an integer factor while decoding (``None``: full size).
    """
    if isinstance(src, PdfPage):
        return render_pdf_page(src.path, src.page, root=root, scale=pdf_scale, max_pixels=max_pixels)
    fp, name = _image_fp(src, root)
    return _open_image(fp, name, max_pixels, decode_pixels)


# ---------------------------------------------------------------- video


def list_frame_files(folder: str | Path) -> list[Path]:
    """Image files in a frame folder, naturally sorted (``2.jpg`` before ``10.jpg``)."""
    return sorted(
        (p for p in Path(folder).iterdir() if kind_of(p) == "image" and p.is_file()),
        key=lambda p: natural_key(p.name),
    )


def load_video(
    path: str | Path,
    root: str | Path | None = None,
    *,
    num_frames: int = DEFAULT_NUM_FRAMES,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    decode_pixels: int | None = None,
    sampling: str = "uniform",
) -> list[Image.Image]:
    """``num_frames`` RGB frames sampled from a frame folder (``sampling``: see :func:`uniform_indices`) or a
    video file (PyAV, uniform), each shrunk to the ``decode_pixels`` budget while decoding (see
    :func:`load_image`)."""
    full = resolve_path(path, root)
    if full.is_dir():
        frames = list_frame_files(full)
        if not frames:
            raise InputError(f"{full}: frame folder has no image files", path=full, reason=UNREADABLE_VIDEO)
        return [load_image(frames[i].name, full, max_pixels=max_pixels, decode_pixels=decode_pixels)
                for i in uniform_indices(len(frames), num_frames, sampling)]
    if not full.exists():
        raise InputError(f"{full}: video not found", path=full, reason=MISSING)
    return _decode_video_file(full, num_frames, max_pixels, decode_pixels)


def _count_frames(full: Path) -> int:
    import av

    with av.open(str(full)) as container:
        return sum(1 for _ in container.decode(video=0))


def _decode_video_file(full: Path, num_frames: int, max_pixels: int | None,
                       decode_pixels: int | None = None) -> list[Image.Image]:
    import av

    name = str(full)
    try:
        with av.open(name) as container:
            if not container.streams.video:
                raise InputError(f"{name}: no video stream", path=full, reason=UNREADABLE_VIDEO)
            stream = container.streams.video[0]
            size = (stream.codec_context.width, stream.codec_context.height)
            _check_pixels(size, max_pixels, name)
            factor = reduce_factor(size, decode_pixels)
            scaled = {"width": max(1, size[0] // factor), "height": max(1, size[1] // factor)} if factor > 1 else {}
            total = stream.frames or 0
        if total <= 0:  # container does not store the count: one cheap counting pass
            total = _count_frames(full)
        frames: list[Image.Image] = []
        for _ in range(2):  # a second pass only if the stored count overstated the real one
            wanted = uniform_indices(total, num_frames)
            picked: dict[int, Image.Image] = {}
            seen = 0
            with av.open(name) as container:
                for i, frame in enumerate(container.decode(video=0)):
                    seen = i + 1
                    if i in wanted and i not in picked:
                        picked[i] = frame.to_image(**scaled).convert("RGB")
                    if wanted and i >= wanted[-1]:
                        break
            if wanted and all(i in picked for i in wanted):
                frames = [picked[i] for i in wanted]
                break
            total = seen if seen < total else _count_frames(full)
            if total <= 0:
                break
    except InputError:
        raise
    except (av.FFmpegError, OSError, ValueError, RuntimeError) as e:
        raise InputError(f"{name}: cannot decode video ({e})", path=full, reason=UNREADABLE_VIDEO) from e
    if not frames:
        raise InputError(f"{name}: video has no decodable frames", path=full, reason=UNREADABLE_VIDEO)
    return frames


def check_video(path: str | Path, root: str | Path | None = None) -> None:
    """Cheap validation: the folder has frames, or the file opens with a video stream."""
    full = resolve_path(path, root)
    if full.is_dir():
        if not list_frame_files(full):
            raise InputError(f"{full}: frame folder has no image files", path=full, reason=UNREADABLE_VIDEO)
        return
    if not full.exists():
        raise InputError(f"{full}: video not found", path=full, reason=MISSING)
    import av

    try:
        with av.open(str(full)) as container:
            if not container.streams.video:
                raise InputError(f"{full}: no video stream", path=full, reason=UNREADABLE_VIDEO)
    except InputError:
        raise
    except (av.FFmpegError, OSError, ValueError) as e:
        raise InputError(f"{full}: cannot open video ({e})", path=full, reason=UNREADABLE_VIDEO) from e


# ---------------------------------------------------------------- PDF


def _open_pdf(path: str | Path, root: str | Path | None) -> Any:
    import pypdfium2 as pdfium

    full = resolve_path(path, root)
    if not full.is_file():
        raise InputError(f"{full}: PDF not found", path=full, reason=MISSING)
    try:
        return pdfium.PdfDocument(str(full))
    except pdfium.PdfiumError as e:
        raise InputError(f"{full}: cannot open PDF ({e})", path=full, reason=BROKEN_PDF) from e


def pdf_num_pages(path: str | Path, root: str | Path | None = None) -> int:
    doc = _open_pdf(path, root)
    try:
        return len(doc)
    finally:
        doc.close()


def pdf_page_size(path: str | Path, page: int = 0, root: str | Path | None = None) -> tuple[float, float]:
    """Page size in PDF points (1/72 inch); also validates that the page exists."""
    doc = _open_pdf(path, root)
    try:
        if not 0 <= page < len(doc):
            raise InputError(f"{path}: page {page} out of range (PDF has {len(doc)} pages)", path=path,
                             reason=BROKEN_PDF)
        return doc.get_page_size(page)
    finally:
        doc.close()


def render_pdf(
    path: str | Path,
    root: str | Path | None = None,
    *,
    pages: Sequence[int] | None = None,
    scale: float = 1.0,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> list[Image.Image]:
    """Render pages (0-based; all when ``None``) to RGB. ``scale=1`` is 72 dpi, ``scale=2`` 144 dpi."""
    import pypdfium2 as pdfium

    doc = _open_pdf(path, root)
    name = str(resolve_path(path, root))
    try:
        wanted = range(len(doc)) if pages is None else pages
        out = []
        for idx in wanted:
            if not 0 <= idx < len(doc):
                raise InputError(f"{name}: page {idx} out of range (PDF has {len(doc)} pages)", path=name,
                                 reason=BROKEN_PDF)
            w, h = doc.get_page_size(idx)
            _check_pixels((round(w * scale), round(h * scale)), max_pixels, f"{name} page {idx}")
            page = doc[idx]
            try:
                out.append(page.render(scale=scale).to_pil().convert("RGB"))
            finally:
                page.close()
        return out
    except pdfium.PdfiumError as e:
        raise InputError(f"{name}: cannot render PDF ({e})", path=name, reason=BROKEN_PDF) from e
    finally:
        doc.close()


def render_pdf_page(
    path: str | Path,
    page: int = 0,
    root: str | Path | None = None,
    *,
    scale: float = 1.0,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """One page of a PDF as an RGB image."""
    return render_pdf(path, root, pages=[page], scale=scale, max_pixels=max_pixels)[0]


@dataclass(frozen=True)
class MediaConfig:
    """How readers decode media: one object passed around instead of four keyword arguments."""

    root: str | Path | None = None
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    num_frames: int = DEFAULT_NUM_FRAMES
    pdf_scale: float = 1.0
    decode_pixels: int | None = DEFAULT_DECODE_PIXELS
    """Images and frames larger than this are shrunk while decoding (set it to the model's image budget)."""
    frame_sampling: str = "uniform"
    """Which frames of a frame folder: ``uniform`` (segment centres) or ``linspace`` (the reference's)."""

    def image(self, src: ImageSource) -> Image.Image:
        return load_image(src, self.root, max_pixels=self.max_pixels, pdf_scale=self.pdf_scale,
                          decode_pixels=self.decode_pixels)

    def video(self, path: str | Path) -> list[Image.Image]:
        return load_video(path, self.root, num_frames=self.num_frames, max_pixels=self.max_pixels,
                          decode_pixels=self.decode_pixels, sampling=self.frame_sampling)

    def check_image(self, src: ImageSource, level: str = "header") -> None:
        """Validate without keeping pixels: ``exists`` (stat), ``header`` (size/format), ``full`` (decode)."""
        if level == "none":
            return
        if level == "full":
            self.image(src)
            return
        if isinstance(src, PdfPage):
            if level == "exists":
                if not resolve_path(src.path, self.root).is_file():
                    raise InputError(f"{src.path}: PDF not found", path=src.path, reason=MISSING)
                return
            w, h = pdf_page_size(src.path, src.page, root=self.root)
            _check_pixels((round(w * self.pdf_scale), round(h * self.pdf_scale)), self.max_pixels,
                          f"{src.path} page {src.page}")
            return
        _, name = _image_fp(src, self.root)  # raises for a missing file / empty dict
        if level == "header":
            _check_pixels(image_header_size(src, self.root), self.max_pixels, name)

    def check_video(self, path: str | Path, level: str = "header") -> None:
        if level == "none":
            return
        if level == "full":
            self.video(path)
            return
        if level == "exists":
            full = resolve_path(path, self.root)
            if not full.exists():
                raise InputError(f"{full}: video not found", path=full, reason=MISSING)
            return
        check_video(path, self.root)
