"""Readers for MMEB-V2 as it is published: one small parser per dataset family of the reference harness.

The data root holds the annotation tables as the Hugging Face repositories lay them out (``<Subset>/test-*.parquet``
of ``MMEB_Test_Instruct``, ``MSR-VTT/test_1k/``, ``NExTQA/MC/``, ``MVBench/<config>/``, BEIR ``corpus/``,
``queries/``, ``qrels/`` shards) and the media as the MMEB-V2 archives unpack (``image-tasks/``,
``video-tasks/frames/<task>/<set>/<video>/frame_0001.jpg`` or ``0001.jpeg``). Which folders, columns,
instructions and ranking a dataset uses is registry data (:mod:`btoks.eval.registry`); each parser below turns
one table row into a query, its candidates, their *names* and the relevant names, the way the reference loader
of that family does (``DatasetSpec.reference`` names the file). Rows go through the one read loop of
:func:`btoks.data.readers.read_rows`, so a bad row or missing frame folder is raised or counted the same way
everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from btoks.data.errors import MISSING, InputError, OnError, SkipLog
from btoks.data.media import MediaConfig, natural_key
from btoks.data.readers import (
    TABLE_EXTENSIONS,
    CheckLevel,
    EvalGlobal,
    EvalLocal,
    LocalRow,
    SampleSpec,
    _Interner,
    build_local,
    iter_table,
    make_spec,
    read_eval,
    read_rows,
    read_visdoc,
)

Parse = Callable[[dict[str, Any]], LocalRow]
OPTION_LETTERS = "ABCD"


# ---------------------------------------------------------------- locating the published files


def locate(spec: Any, data_root: str | Path) -> Path | None:
    """The annotation folder or table of ``spec`` under ``data_root`` (first of ``spec.folders`` that exists,
    as a folder or as ``<folder>.jsonl``/``.parquet``/...), or ``None``."""
    root = Path(data_root)
    names = [*(getattr(spec, "folders", ()) or ()), spec.path or spec.name]
    beir = getattr(spec, "family", "") in ("vidore", "visrag") or getattr(spec, "format", "") == "visdoc"
    for name in names:
        p = root / name
        if p.is_dir() and (not beir or any(p.glob("corpus*"))):  # "docvqa" must not be the image set "DocVQA"
            return p
        for ext in TABLE_EXTENSIONS:
            if p.with_name(p.name + ext).is_file():
                return p.with_name(p.name + ext)
    return None


def split_tables(folder: Path, split: str) -> list[Path]:
    """The table files of one split in a published folder: ``<split>-*.parquet`` / ``<split>.jsonl`` directly
    there or under ``data/``; any tables when none is named after the split; the file itself for a file."""
    if folder.is_file():
        return [folder]
    for d in (folder, folder / "data"):
        if not d.is_dir():
            continue
        tables = sorted((p for p in d.iterdir() if p.is_file() and p.suffix.lower() in TABLE_EXTENSIONS),
                        key=lambda p: natural_key(p.name))
        named = [p for p in tables if p.stem == split or p.name.startswith(f"{split}-")]
        if named or tables:
            return named or tables
    raise InputError(f"no {split!r} table (.parquet/.jsonl/...) in the folder or its data/ sub-folder",
                     file=folder, reason=MISSING)


def media_dir(spec: Any, media_root: Path, fallback: Path) -> Path:
    """The first of the spec's published media folders that exists under ``media_root``; ``fallback`` (the
    dataset's own folder, where older copies keep their media) when none does."""
    options = [media_root / m for m in getattr(spec, "media", ()) or ()]
    return next((p for p in options if p.is_dir()), fallback)


def _rows(files: Sequence[Path]) -> Iterator[dict[str, Any]]:
    for f in files:
        yield from iter_table(f)


# ---------------------------------------------------------------- image families (local)


def _strip_marker(inst: Any) -> str:
    return str(inst or "").replace("<|image_1|>", "").strip()


def _image_query(row: dict[str, Any]) -> SampleSpec:
    """Query of the image families that embed the query image: instruction (marker removed) + text + image."""
    img = row.get("qry_img_path")
    return make_spec(text=row.get("qry_text"), instruction=_strip_marker(row.get("qry_inst")),
                     images=[img] if img else [])


def _answer(text: str) -> SampleSpec:
    """A candidate answer; a blank one is still a candidate (OK-VQA has them) and is embedded as one space,
    since an input without any token has nothing to pool."""
    return make_spec(text=text if text.strip() else " ")


def _text_candidates(spec: Any) -> Parse:
    """Classification, VQA and image->text: candidates are the ``tgt_text`` strings as they are (no target
    instruction), named by their text, the first is the answer."""
    specs: dict[str, SampleSpec] = {}  # a 1000-label set repeats the same strings on every row: build each once

    def parse(row: dict[str, Any]) -> LocalRow:
        texts = [str(t) for t in row["tgt_text"]]
        cands = [specs.get(t) or specs.setdefault(t, _answer(t)) for t in texts]
        return LocalRow(_image_query(row), cands, texts, {texts[0]: 1.0})
    return parse


def _image_candidates(row: dict[str, Any], name: Callable[[str, str], str]) -> tuple[list[SampleSpec], list[str]]:
    """Image candidates: the target instruction, plus each caption when the set has captions (WebQA, EDIS,
    RefCOCO-Matching: the reference decides on the first one), and the candidate image."""
    inst = _strip_marker(row.get("tgt_inst"))
    caps = [str(c) for c in row["tgt_text"]]
    paths = [str(p) for p in row["tgt_img_path"]]
    if len(caps) != len(paths):
        raise ValueError(f"{len(caps)} tgt_text for {len(paths)} tgt_img_path")
    with_caps = bool(caps and caps[0].strip())
    cands = [make_spec(text=c if with_caps else "", instruction=inst, images=[p]) for c, p in zip(caps, paths, strict=True)]
    return cands, [name(p, c) for p, c in zip(paths, caps, strict=True)]


def _t2i(spec: Any) -> Parse:
    def parse(row: dict[str, Any]) -> LocalRow:
        q = make_spec(text=row.get("qry_text"), instruction=_strip_marker(row.get("qry_inst")))
        cands, names = _image_candidates(row, lambda p, c: p)
        return LocalRow(q, cands, names, {names[0]: 1.0})
    return parse


def _i2i_vg(spec: Any) -> Parse:
    def parse(row: dict[str, Any]) -> LocalRow:
        # path + caption names the candidate: several objects of one image can be targets (RefCOCO-Matching)
        cands, names = _image_candidates(row, lambda p, c: f"{p}:{c.strip(chr(34))}")
        return LocalRow(_image_query(row), cands, names, {names[0]: 1.0})
    return parse


# ---------------------------------------------------------------- video families


def _video_query(spec: Any, video: str, text: Any = "") -> SampleSpec:
    return make_spec(text=text, instruction=spec.query_instruction, video=video)


def _video_cand(spec: Any, video: str) -> SampleSpec:
    return make_spec(instruction=spec.target_instruction, video=video)


def _video_cls(spec: Any) -> Parse:
    def parse(row: dict[str, Any]) -> LocalRow:
        label = str(row["pos_text"])
        return LocalRow(_video_query(spec, str(row["video_id"])), [make_spec(text=label)], [label], {label: 1.0})
    return parse


def _ssv2(spec: Any) -> Parse:
    def parse(row: dict[str, Any]) -> LocalRow:
        options = [str(o) for o in row["neg_text"]]
        return LocalRow(_video_query(spec, str(row["video_id"])), [_answer(o) for o in options], options,
                        {str(row["pos_text"]): 1.0})
    return parse


def _retrieval(video: Callable[[dict[str, Any]], str], caption: Callable[[dict[str, Any]], Any]) -> Callable:
    """Text -> video retrieval: the caption is the query, the video (named by its id) the one candidate."""
    def family(spec: Any) -> Parse:
        def parse(row: dict[str, Any]) -> LocalRow:
            vid = video(row)
            return LocalRow(make_spec(text=caption(row), instruction=spec.query_instruction),
                            [_video_cand(spec, vid)], [vid], {vid: 1.0})
        return parse
    return family


def _first(x: Any) -> Any:
    return x[0] if isinstance(x, list | tuple) or hasattr(x, "tolist") else x


def _qa_template(question: str, options: Sequence[str], answer: str) -> tuple[str, list[str], str]:
    """Question with lettered options, the lettered options and the lettered answer (the reference's
    ``qa_template``; an answer that is not among the options gets the letter before ``A``, as there)."""
    idx = next((i for i, o in enumerate(options) if o == answer), -1)
    lettered = [f"({chr(ord('A') + i)}) {o}" for i, o in enumerate(options)]
    text = (f"{question}\nOptions:\n" + "".join(f"{o}\n" for o in lettered)).rstrip()
    return text, lettered, f"({chr(ord('A') + idx)}) {answer}"


def _strip_letter(option: str) -> str:
    """``"A. text"`` -> ``"text"`` the way the reference cuts it (``o[o.find('. '):].strip('. ')``)."""
    return option[option.find(". "):].strip(". ")


def _nextqa(spec: Any) -> Parse:
    def parse(row: dict[str, Any]) -> LocalRow:
        options = [str(row[f"a{i}"]) for i in range(5)]
        text, _, _ = _qa_template(str(row["question"]), options, "")
        answer = options[int(row["answer"])]
        return LocalRow(_video_query(spec, str(row["video"]), text), [_answer(o) for o in options],
                        options, {answer: 1.0})
    return parse


def _lettered_options(spec: Any, video: str, text: str, options: list[str], answer_idx: int) -> LocalRow:
    return LocalRow(_video_query(spec, video, text), [_answer(_strip_letter(o)) for o in options],
                    options, {options[answer_idx]: 1.0})


def _videomme(spec: Any) -> Parse:
    def parse(row: dict[str, Any]) -> LocalRow:
        options = [str(o) for o in row["options"]]
        text = str(row["question"]) + "\n" + "\n".join(options)
        return _lettered_options(spec, str(row["videoID"]), text, options, OPTION_LETTERS.index(row["answer"]))
    return parse


def _egoschema(spec: Any) -> Parse:
    def parse(row: dict[str, Any]) -> LocalRow:
        options = [str(o) for o in row["option"]]
        text = str(row["question"]) + " ".join(options)
        return _lettered_options(spec, str(row["video_idx"]), text, options, int(row["answer"]))
    return parse


def _mvbench(spec: Any) -> Parse:
    def parse(row: dict[str, Any]) -> LocalRow:
        text, lettered, answer = _qa_template(str(row["question"]), [str(c) for c in row["candidates"]],
                                              str(row["answer"]))
        video = f"{row['subset']}/{row['video']}"
        return LocalRow(_video_query(spec, video, text), [_answer(o) for o in lettered], lettered,
                        {answer: 1.0})
    return parse


def _activitynetqa(spec: Any) -> Parse:
    def parse(row: dict[str, Any]) -> LocalRow:
        options = ["yes", "no"]
        return LocalRow(_video_query(spec, f"v_{row['video_name']}", f"{row['question']}? (A) yes; (B) no."),
                        [_answer(o) for o in options], options, {str(row["answer"]): 1.0})
    return parse


def _moment(spec: Any, media: MediaConfig) -> Parse:
    root = Path(media.root or ".")

    def parse(row: dict[str, Any]) -> LocalRow:
        clip = os.path.splitext(os.path.basename(str(row["video_path"])))[0]
        folder = root / clip
        if not folder.is_dir():
            raise InputError("clip folder not found", file=folder, reason=MISSING)
        subs = sorted((p.name for p in folder.iterdir() if p.is_dir() and p.name != "query"), key=natural_key)
        names = [f"{clip}/{s}" for s in subs]
        positive = [n for n, s in zip(names, subs, strict=True) if s.startswith("positive")]
        if not positive:
            raise InputError("no positive_* clip folder", file=folder, reason=MISSING)
        return LocalRow(_video_query(spec, f"{clip}/query", row["query"]), [_video_cand(spec, n) for n in names],
                        names, {positive[-1]: 1.0})
    return parse


def _momentseeker(spec: Any) -> Parse:
    variants = dict(spec.instruction_variants)

    def clip(path: str) -> str:
        return "video_frames/" + path.replace("/", "_").split(".mp4")[0]

    def parse(row: dict[str, Any]) -> LocalRow:
        given = str(row.get("input_frames") or "")
        if given.endswith(".mp4"):
            q = make_spec(text=row["query"], instruction=variants["video"], video=clip(given))
        elif given.endswith(".jpg"):
            q = make_spec(text=row["query"], instruction=variants["image"], images=[f"query_{given}"])
        else:
            q = make_spec(text=row["query"], instruction=variants["text"])
        pos = [clip(str(e["output_path"])) for e in row["positive_frames"]]
        neg = [clip(str(e["output_path"])) for e in row["negative_frames"]]
        return LocalRow(q, [_video_cand(spec, n) for n in pos + neg], pos + neg, dict.fromkeys(pos, 1.0))
    return parse


_FAMILIES: dict[str, Callable[..., Parse]] = {
    "image_cls": _text_candidates,
    "image_qa": _text_candidates,
    "image_i2t": _text_candidates,
    "image_t2i": _t2i,
    "image_i2i_vg": _i2i_vg,
    "video_cls": _video_cls,
    "video_ssv2": _ssv2,
    "msrvtt": _retrieval(lambda r: str(r["video_id"]), lambda r: r["caption"]),
    "msvd": _retrieval(lambda r: str(r["video_id"]), lambda r: _first(r["caption"])),
    "didemo": _retrieval(lambda r: os.path.splitext(os.path.basename(str(r["video"])))[0], lambda r: r["caption"]),
    "vatex": _retrieval(lambda r: str(r["videoID"]), lambda r: _first(r["enCap"])),
    "youcook2": _retrieval(lambda r: str(r["id"]), lambda r: r["sentence"]),
    "nextqa": _nextqa,
    "videomme": _videomme,
    "egoschema": _egoschema,
    "mvbench": _mvbench,
    "activitynetqa": _activitynetqa,
    "momentseeker": _momentseeker,
}
_BLANK_OK = {"image_cls", "image_qa", "image_i2t", "video_ssv2", "nextqa", "videomme", "egoschema", "mvbench"}


def _tables(spec: Any, folder: Path) -> tuple[list[Path], Callable[[], Iterator[dict[str, Any]]]]:
    """Table files of the spec's split and a row iterator (MVBench: every config, with its name as ``subset``)."""
    if spec.family != "mvbench":
        files = split_tables(folder, spec.split)
        return files, lambda: _rows(files)
    from btoks.eval.mmeb_labels import MVBENCH_CONFIGS

    configs = [c for c in MVBENCH_CONFIGS if (folder / c).is_dir()]
    if not configs:
        raise InputError(f"none of the {len(MVBENCH_CONFIGS)} MVBench config folders", file=folder, reason=MISSING)
    per = [(c, split_tables(folder / c, spec.split)) for c in configs]

    def rows() -> Iterator[dict[str, Any]]:
        for c, files in per:
            for row in _rows(files):
                yield {**row, "subset": c}
    return [f for _, fs in per for f in fs], rows


def read_dataset(spec: Any, data_root: str | Path, *, media_root: str | Path | None = None,
                 on_error: OnError = "raise", check: CheckLevel = "header", limit: int | None = None,
                 progress: bool | None = None, media: MediaConfig | None = None) -> EvalLocal | EvalGlobal:
    """Read one registry dataset from a data root laid out as published (``media_root``: where ``image-tasks/``
    and ``video-tasks/`` live, default the data root). Specs without a ``family`` (manifests, mini-MMEB) are
    read with the generic btoks layout (:func:`btoks.data.readers.read_eval`)."""
    if not getattr(spec, "family", ""):
        kwargs: dict[str, Any] = {"on_error": on_error, "check": check, "limit": limit, "progress": progress}
        if media is not None:
            kwargs["media"] = media
        if media_root is not None:
            kwargs["root"] = media_root
        return read_eval(spec, data_root, **kwargs)
    root = Path(data_root)
    folder = locate(spec, root)
    if folder is None:
        tried = ", ".join(str(root / f) for f in spec.folders)
        raise InputError(f"published files not found (looked for {tried})", dataset=spec.name, reason=MISSING)
    mdir = media_dir(spec, Path(media_root) if media_root is not None else root,
                     folder if folder.is_dir() else folder.parent)
    if spec.family in ("vidore", "visrag"):
        return read_visdoc(folder, dataset=spec.name, root=mdir, media=media,
                           query_instruction=spec.query_instruction, target_instruction=spec.target_instruction,
                           language=spec.language, on_error=on_error, check=check, limit=limit,
                           progress=progress)
    mconf = replace(media or MediaConfig(), root=mdir, frame_sampling="linspace")  # the reference's frames
    interner, log = _Interner(mconf, check), SkipLog(spec.name)
    make = _moment if spec.family == "moment_retrieval" else _FAMILIES[spec.family]
    parse_row = make(spec, mconf) if spec.family == "moment_retrieval" else make(spec)
    blank = spec.family in _BLANK_OK

    def parse(row: dict[str, Any], idx: int) -> LocalRow:
        return parse_row(row).validated(interner, spec.name, idx, allow_empty=blank)

    files, rows = _tables(spec, folder)
    parsed = read_rows(rows(), parse, dataset=spec.name, file=files[0] if len(files) == 1 else folder,
                       on_error=on_error, log=log, limit=limit, progress=progress)
    corpus: list[tuple[str, SampleSpec]] = []
    if spec.family == "video_cls":
        from btoks.eval.mmeb_labels import VIDEO_LABELS

        corpus = [(label, interner(make_spec(text=label))) for label in VIDEO_LABELS[spec.name]]
    return build_local(spec.name, mconf, log, parsed, corpus)


__all__ = ["locate", "media_dir", "read_dataset", "split_tables"]
