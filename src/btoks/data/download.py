"""Getting MMEB-V2 as published (``btoks data download mmeb-v2``) and checking a copy (``btoks data check``).

The download fetches, with ``huggingface_hub``, the annotation repositories each registry entry names
(``DatasetSpec.hf``: ``ziyjiang/MMEB_Test_Instruct/<Subset>``, ``VLM2Vec/MSR-VTT`` config ``test_1k``, the ViDoRe
and VisRAG BEIR repositories, ...) into ``ROOT/<repository name>/`` and the media archives of
``TIGER-Lab/MMEB-V2`` (``image-tasks/``, ``video-tasks/frames/``) into ``ROOT``, then unpacks the archives the
way the VLM2Vec download script does. Visual-document pages ship inside the corpus tables, so that family needs
no archive. Every hub call goes through one ``fetch`` function (``huggingface_hub.snapshot_download`` unless a
caller passes another), which is how the tests run without a network.
"""

from __future__ import annotations

import io
import shutil
import tarfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from btoks.data.errors import InputError
from btoks.errors import BToksError

MEDIA_REPO = "TIGER-Lab/MMEB-V2"
TABLE_PATTERNS = ("*.parquet", "*.jsonl", "*.json", "*.arrow")


class DownloadError(BToksError):
    """The hub could not be reached or refused a request; the message says which repository and what to do."""


@dataclass(frozen=True)
class Fetch:
    """One ``snapshot_download`` call."""

    repo: str
    local_dir: Path
    allow_patterns: tuple[str, ...]


def _select(families: Iterable[str] | None, datasets: Iterable[str] | None) -> list[Any]:
    from btoks.eval import registry

    specs = list(registry.MMEB_V2)
    if datasets:
        wanted = {registry.get(d).name for d in datasets}
        specs = [s for s in specs if s.name in wanted]
    if families:
        fams = set(families)
        unknown = fams - set(registry.MODALITIES)
        if unknown:
            raise ValueError(f"unknown families {sorted(unknown)}; choose from {', '.join(registry.MODALITIES)}")
        specs = [s for s in specs if s.modality in fams]
    return specs


def plan(root: str | Path, families: Iterable[str] | None = None, datasets: Iterable[str] | None = None,
         ) -> list[Fetch]:
    """The hub calls that fetch the selected datasets' tables and media into ``root`` (no network used)."""
    root = Path(root)
    patterns: dict[tuple[str, Path], list[str]] = {}
    media: list[str] = []
    for spec in _select(families, datasets):
        repo, config = spec.hf[0], spec.hf[1] if len(spec.hf) > 1 else ""
        pats = [f"{config}/{p}" if config else p for p in TABLE_PATTERNS]  # hub patterns: * spans folders
        patterns.setdefault((repo, root / repo.split("/")[1]), []).extend(pats)
        for m in spec.media[:1]:
            top = "image-tasks/*" if m.startswith("image-tasks") else f"{'/'.join(m.split('/')[:3])}*"
            if top not in media:
                media.append(top)
    out = [Fetch(repo, d, tuple(dict.fromkeys(p))) for (repo, d), p in patterns.items()]
    if media:
        out.append(Fetch(MEDIA_REPO, root, tuple(media)))
    return out


def _unpack(tar_parts: Sequence[Path], dest: Path) -> None:
    """Extract a ``.tar.gz`` (or its ``-00``, ``-01``, ... parts read as one stream) into ``dest``, refusing
    members that would land outside it."""
    dest.mkdir(parents=True, exist_ok=True)

    class _Joined(io.RawIOBase):
        def __init__(self) -> None:
            self.files = [p.open("rb") for p in tar_parts]

        def readable(self) -> bool:
            return True

        def readinto(self, b: Any) -> int:
            while self.files:
                n = self.files[0].readinto(b)
                if n:
                    return n
                self.files.pop(0).close()
            return 0

    with tarfile.open(fileobj=io.BufferedReader(_Joined()), mode="r|gz") as tar:
        tar.extractall(dest, filter="data")


def unpack_archives(root: str | Path) -> list[str]:
    """Unpack the MMEB-V2 media archives present under ``root`` as the VLM2Vec download script does; an
    archive whose folder already exists is left alone. Returns what was unpacked."""
    root = Path(root)
    done = []
    img = root / "image-tasks"
    if (img / "mmeb_v1.tar.gz").is_file() and not (img / "MMEB").exists() and not any(
            p.is_dir() for p in img.iterdir()):
        _unpack([img / "mmeb_v1.tar.gz"], img)
        if (img / "MMEB").is_dir():  # the script moves MMEB/* up into image-tasks/
            for p in (img / "MMEB").iterdir():
                shutil.move(str(p), str(img / p.name))
            (img / "MMEB").rmdir()
        done.append("image-tasks/mmeb_v1.tar.gz")
    frames = root / "video-tasks" / "frames"
    for name, into in (("video_cls", "video_cls"), ("video_ret", "video_ret"), ("video_mret", "")):
        arc = frames / f"{name}.tar.gz"
        if arc.is_file() and not (frames / name).is_dir():
            _unpack([arc], frames / into if into else frames)
            done.append(f"video-tasks/frames/{name}.tar.gz")
    parts = sorted(frames.glob("video_qa.tar.gz-*")) if frames.is_dir() else []
    if parts and not (frames / "video_qa").is_dir():
        _unpack(parts, frames)
        done.append("video-tasks/frames/video_qa.tar.gz-*")
    return done


def download_mmeb_v2(root: str | Path, *, families: Iterable[str] | None = None,
                     datasets: Iterable[str] | None = None, fetch: Callable[..., Any] | None = None,
                     unpack: bool = True, log: Callable[[str], None] | None = print) -> list[Fetch]:
    """Fetch the selected MMEB-V2 datasets into ``root`` in the published layout (see the module docstring).

    ``fetch`` defaults to ``huggingface_hub.snapshot_download``; any failure to reach the hub (offline, a gated
    repository, no disk) stops with one :class:`DownloadError` naming the repository."""
    if fetch is None:
        from huggingface_hub import snapshot_download as fetch
    steps = plan(root, families, datasets)
    for i, step in enumerate(steps, 1):
        if log:
            log(f"[{i}/{len(steps)}] {step.repo} -> {step.local_dir}")
        try:
            fetch(step.repo, repo_type="dataset", local_dir=str(step.local_dir),
                  allow_patterns=list(step.allow_patterns))
        except Exception as e:  # the hub client raises many types (offline, HTTP, auth); all mean the same here
            raise DownloadError(
                f"cannot download {step.repo} from the Hugging Face Hub ({type(e).__name__}: {e}). Check the "
                "network (and HF_HUB_OFFLINE / HF_TOKEN), or fetch the repositories elsewhere and copy the folder "
                "tree described in docs/data-format.md") from e
    if unpack:
        for arc in unpack_archives(root):
            if log:
                log(f"unpacked {arc}")
    return steps


# ---------------------------------------------------------------- check


@dataclass
class CheckRow:
    """The state of one dataset in a data root."""

    name: str
    modality: str
    status: str
    """``missing`` (no published files), ``ok`` (every row usable), ``incomplete`` (rows skipped), ``error``."""
    rows: int = 0
    skipped: dict[str, int] | None = None
    message: str = ""


def check_root(root: str | Path, *, media_root: str | Path | None = None, datasets: Iterable[str] | None = None,
               check: str = "exists", progress: bool | None = False) -> list[CheckRow]:
    """Which of the 78 datasets are present under ``root``, readable, and complete (every row's media found)."""
    from btoks.data.mmeb_v2 import locate, read_dataset

    out = []
    for spec in _select(None, datasets):
        if locate(spec, root) is None:
            out.append(CheckRow(spec.name, spec.modality, "missing"))
            continue
        try:
            ev = read_dataset(spec, root, media_root=media_root, on_error="skip", check=check,  # type: ignore[arg-type]
                              progress=progress)
        except (InputError, OSError, ValueError) as e:
            out.append(CheckRow(spec.name, spec.modality, "error", message=str(e)))
            continue
        sk = ev.skipped.as_dict()
        status = "ok" if len(ev) and not sk else ("incomplete" if len(ev) else "error")
        first = ev.skipped.examples[0] if ev.skipped.examples else ""
        out.append(CheckRow(spec.name, spec.modality, status, len(ev), sk, first))
    return out


def format_check(rows: Sequence[CheckRow]) -> str:
    """A plain-text table plus a one-line count per status."""
    lines = []
    for r in rows:
        detail = f"{r.rows} queries" if r.rows else ""
        if r.skipped:
            detail += f", skipped {', '.join(f'{k}: {v}' for k, v in r.skipped.items())}"
        if r.message:
            detail += f" ({r.message})"
        lines.append(f"{r.status:<10} {r.modality:<6} {r.name:<45} {detail}".rstrip())
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.status] = counts.get(r.status, 0) + 1
    lines.append(" ".join(f"{k}: {v}" for k, v in sorted(counts.items())) + f" (of {len(rows)})")
    return "\n".join(lines)
