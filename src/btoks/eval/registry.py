"""The 78 MMEB-V2 datasets (36 image, 18 video, 24 visual-document) plus user datasets from a manifest.

A :class:`DatasetSpec` says how a dataset is scored (modality, meta-task, metric), which instructions embed
its two sides (VLM2Vec-V2 style; rows that carry their own instruction keep it) and which side's text the
generative (GIC) loss predicts (``ntp_side``, design §1). Names are the official MMEB-V2 names, which the
published score files use; the short visual-document names of the design brief ("arxivqa", "ViDoSeek-page",
...) resolve through aliases.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

Modality = Literal["image", "video", "visdoc"]
NtpSide = Literal["positive", "query", "both", "none"]

MODALITIES: tuple[str, ...] = ("image", "video", "visdoc")
META_TASKS: dict[str, tuple[str, ...]] = {
    "image": ("classification", "vqa", "retrieval", "grounding"),
    "video": ("classification", "qa", "retrieval", "moment_retrieval"),
    "visdoc": ("visdoc",),
}
NTP_SIDES = ("positive", "query", "both", "none")
FORMATS = ("local", "visdoc")
_METRIC_RE = re.compile(r"^(hit|ndcg|recall)@\d+$|^(mrr|map)$")


@dataclass(frozen=True)
class DatasetSpec:
    """How one dataset is read, embedded and scored.

    ``format`` is ``local`` (each row ranks its own candidates) or ``visdoc`` (BEIR folder, global ranking);
    ``path`` is where its data lives relative to the data root (``None``: a folder named like the dataset).
    ``group`` is a finer reporting group (ViDoRe-V1/V2, VisRAG, VisDoc-OOD) that does not enter the
    MMEB aggregation.
    """

    name: str
    modality: str
    meta_task: str
    metric: str
    query_instruction: str
    target_instruction: str
    ntp_side: str
    format: str = ""
    path: str | None = None
    group: str = ""
    media_root: str | None = None
    """Folder media paths are relative to (default: the dataset's own folder, as in MMEB-V2)."""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("DatasetSpec.name must not be empty")
        if self.modality not in MODALITIES:
            raise ValueError(f"{self.name}: modality {self.modality!r} not in {MODALITIES}")
        if self.meta_task not in META_TASKS[self.modality]:
            raise ValueError(f"{self.name}: meta_task {self.meta_task!r} not in {META_TASKS[self.modality]} "
                             f"for modality {self.modality!r}")
        if not _METRIC_RE.match(self.metric):
            raise ValueError(f"{self.name}: metric {self.metric!r} is not hit@k, ndcg@k, recall@k, mrr or map")
        if self.ntp_side not in NTP_SIDES:
            raise ValueError(f"{self.name}: ntp_side {self.ntp_side!r} not in {NTP_SIDES}")
        if not self.format:
            object.__setattr__(self, "format", "visdoc" if self.modality == "visdoc" else "local")
        if self.format not in FORMATS:
            raise ValueError(f"{self.name}: format {self.format!r} not in {FORMATS}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- the MMEB-V2 table

_IMG = "Represent the given image"
_QA_IMG = "Represent the given image with the following question:"
_CROP = "Represent the given cropped image of the object"
_WIKI_T = "Represent the given Wikipedia image with related text information:"
_VID_T = "Understand the content of the provided video."
_VQA_Q = ("Given a video and a question, select the most accurate answer from the provided candidates. "
          "Return only the exact text of your chosen answer. Question:")
_VQA_T = "Represent the following answer to a question:"
_T2V_Q = "Find a video that contains the following visual content:"
_MR_Q = "Find the clip that corresponds to the described scene in the given video:"
_MR_T = "Understand the content of the provided video clip."
_DOC_Q = "Find a document image that matches the given query:"
_DOC_T = "Understand the content of the provided document image."

# (name, meta_task, query_instruction, target_instruction, ntp_side)
_IMAGE: list[tuple[str, str, str, str, str]] = [
    ("ImageNet-1K", "classification", "Represent the given image for classification", "", "positive"),
    ("N24News", "classification",
     "Represent the given news image with the following caption for domain classification:", "", "positive"),
    ("HatefulMemes", "classification",
     "Represent the given image for binary classification to determine whether it constitutes hateful speech "
     "or not", "", "positive"),
    ("VOC2007", "classification", "Identify the object shown in the image", "", "positive"),
    ("SUN397", "classification", "Identify the scene shown in the image", "", "positive"),
    ("Place365", "classification", "Identify the scene shown in the image", "", "positive"),
    ("ImageNet-A", "classification", "Represent the given image for classification", "", "positive"),
    ("ImageNet-R", "classification", "Represent the given image for classification", "", "positive"),
    ("ObjectNet", "classification", "Identify the object shown in the image", "", "positive"),
    ("Country211", "classification", "Identify the country depicted in the image", "", "positive"),
    *[(n, "vqa", _QA_IMG, "", "positive") for n in (
        "OK-VQA", "A-OKVQA", "DocVQA", "InfographicsVQA", "ChartQA", "Visual7W", "ScienceQA", "VizWiz", "GQA",
        "TextVQA")],
    ("VisDial", "retrieval",
     "Represent the given dialogue about an image, which is used for image retrieval:", _IMG, "query"),
    ("CIRR", "retrieval", "Given an image, find a similar everyday image with the described changes:", _IMG,
     "none"),
    ("VisualNews_t2i", "retrieval", "Retrieve an image of this news caption:", _IMG, "query"),
    ("VisualNews_i2t", "retrieval", "Find a caption for the news in the given photo", "", "positive"),
    ("MSCOCO_t2i", "retrieval", "Find me an everyday image that matches the given caption:", _IMG, "query"),
    ("MSCOCO_i2t", "retrieval", "Find an image caption describing the given everyday image", "", "positive"),
    ("NIGHTS", "retrieval", "Find a day-to-day image that looks similar to the provided image", _IMG, "none"),
    ("WebQA", "retrieval", "Find a Wikipedia image-passage pair that answers this question:",
     "Represent the given image with related text information:", "query"),
    ("FashionIQ", "retrieval", "Find an image to match the fashion image and style note:", _IMG, "none"),
    ("Wiki-SS-NQ", "retrieval", "Find the document screenshot that can answer the given query:",
     "Represent the given document screenshot", "query"),
    ("OVEN", "retrieval",
     "Retrieve a Wikipedia image-description pair that provides evidence for the question of this image:",
     _WIKI_T, "positive"),
    ("EDIS", "retrieval", "Find a news image that matches the provided caption:",
     "Represent the given image with related text information:", "query"),
    ("MSCOCO", "grounding", "Select the portion of the image that isolates the object of the given label:", _CROP,
     "query"),
    ("RefCOCO", "grounding", "Select the portion of the image that follows the language expressions:", _CROP,
     "query"),
    ("RefCOCO-Matching", "grounding", "Select the portion of the image that matches the description:",
     "Represent the given cropped image of the object with its description:", "query"),
    ("Visual7W-Pointing", "grounding", "Select the portion of the image that answers the given question:", _CROP,
     "query"),
]

_VIDEO: list[tuple[str, str, str, str, str]] = [
    ("K700", "classification", "Recognize the category of the video content.", "", "positive"),
    ("SmthSmthV2", "classification",
     "What actions or object interactions are being performed by the person in the video?", "", "positive"),
    ("HMDB51", "classification", "What actions or object interactions is the person in the video doing?", "",
     "positive"),
    ("UCF101", "classification", "What activities or sports are being performed by the person in the video?", "",
     "positive"),
    ("Breakfast", "classification", "Recognize the breakfast type that the person is cooking in the video.", "",
     "positive"),
    *[(n, "qa", _VQA_Q, _VQA_T, "positive") for n in ("MVBench", "Video-MME", "NExTQA", "EgoSchema",
                                                       "ActivityNetQA")],
    *[(n, "retrieval", _T2V_Q, _VID_T, "query") for n in ("DiDeMo", "MSR-VTT", "MSVD", "VATEX", "YouCook2")],
    *[(n, "moment_retrieval", _MR_Q, _MR_T, "query") for n in ("QVHighlight", "Charades-STA", "MomentSeeker")],
]

# (official name, group, short alias used in the design brief)
_VISDOC: list[tuple[str, str, str]] = [
    ("ViDoRe_arxivqa", "ViDoRe-V1", "arxivqa"),
    ("ViDoRe_docvqa", "ViDoRe-V1", "docvqa"),
    ("ViDoRe_infovqa", "ViDoRe-V1", "infovqa"),
    ("ViDoRe_tabfquad", "ViDoRe-V1", "tabfquad"),
    ("ViDoRe_tatdqa", "ViDoRe-V1", "tatdqa"),
    ("ViDoRe_shiftproject", "ViDoRe-V1", "shiftproject"),
    ("ViDoRe_syntheticDocQA_artificial_intelligence", "ViDoRe-V1", "syntheticDocQA_ai"),
    ("ViDoRe_syntheticDocQA_energy", "ViDoRe-V1", "syntheticDocQA_energy"),
    ("ViDoRe_syntheticDocQA_government_reports", "ViDoRe-V1", "syntheticDocQA_government"),
    ("ViDoRe_syntheticDocQA_healthcare_industry", "ViDoRe-V1", "syntheticDocQA_healthcare"),
    ("ViDoRe_esg_reports_human_labeled_v2", "ViDoRe-V2", "esg_human_labeled"),
    ("ViDoRe_biomedical_lectures_v2_multilingual", "ViDoRe-V2", "biomedical_multilingual"),
    ("ViDoRe_economics_reports_v2_multilingual", "ViDoRe-V2", "economics_multilingual"),
    ("ViDoRe_esg_reports_v2_multilingual", "ViDoRe-V2", "esg_multilingual"),
    ("VisRAG_ArxivQA", "VisRAG", "VisRAG-ArxivQA"),
    ("VisRAG_ChartQA", "VisRAG", "VisRAG-ChartQA"),
    ("VisRAG_MP-DocVQA", "VisRAG", "VisRAG-MP-DocVQA"),
    ("VisRAG_SlideVQA", "VisRAG", "VisRAG-SlideVQA"),
    ("VisRAG_InfoVQA", "VisRAG", "VisRAG-InfoVQA"),
    ("VisRAG_PlotQA", "VisRAG", "VisRAG-PlotQA"),
    ("ViDoSeek-page", "VisDoc-OOD", "ViDoSeek_page"),
    ("ViDoSeek-doc", "VisDoc-OOD", "ViDoSeek_doc"),
    ("MMLongBench-page", "VisDoc-OOD", "MMLongBench_page"),
    ("MMLongBench-doc", "VisDoc-OOD", "MMLongBench_doc"),
]

MMEB_V2: tuple[DatasetSpec, ...] = (
    *(DatasetSpec(n, "image", m, "hit@1", q, t, s) for n, m, q, t, s in _IMAGE),
    *(DatasetSpec(n, "video", m, "hit@1", q, t, s) for n, m, q, t, s in _VIDEO),
    *(DatasetSpec(n, "visdoc", "visdoc", "ndcg@5", _DOC_Q, _DOC_T, "query", group=g) for n, g, _ in _VISDOC),
)
"""The 78 scored MMEB-V2 datasets in benchmark order."""
MMEB_V2_NAMES: frozenset[str] = frozenset(s.name for s in MMEB_V2)

_REGISTRY: dict[str, DatasetSpec] = {s.name: s for s in MMEB_V2}
_ALIASES: dict[str, str] = {alias: name for name, _, alias in _VISDOC}


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def get(name: str) -> DatasetSpec:
    """Look a dataset up by name, alias, or case/punctuation-insensitive spelling."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in _ALIASES:
        return _REGISTRY[_ALIASES[name]]
    loose = {_norm(n): n for n in [*_REGISTRY, *_ALIASES]}
    hit = loose.get(_norm(name))
    if hit is not None:
        return _REGISTRY[_ALIASES.get(hit, hit)]
    close = difflib.get_close_matches(name, [*_REGISTRY, *_ALIASES], n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise KeyError(f"unknown dataset {name!r}{hint} ({len(_REGISTRY)} registered; see btoks.eval.registry.names())")


def names(modality: str | None = None, meta_task: str | None = None, *, mmeb_only: bool = False) -> list[str]:
    """Registered dataset names, optionally filtered, in registration order."""
    return [s.name for s in specs(modality, meta_task, mmeb_only=mmeb_only)]


def specs(modality: str | None = None, meta_task: str | None = None, *, mmeb_only: bool = False,
          ) -> list[DatasetSpec]:
    return [
        s for s in _REGISTRY.values()
        if (modality is None or s.modality == modality) and (meta_task is None or s.meta_task == meta_task)
        and (not mmeb_only or s.name in MMEB_V2_NAMES)
    ]


def register(spec: DatasetSpec, *, overwrite: bool = False) -> DatasetSpec:
    """Add a dataset; re-registering an identical spec is a no-op, a different one needs ``overwrite``.
    MMEB-V2 entries cannot be replaced (their scores must stay comparable with published ones)."""
    old = _REGISTRY.get(spec.name)
    if old is not None and old != spec:
        if spec.name in MMEB_V2_NAMES:
            raise ValueError(f"{spec.name!r} is an MMEB-V2 dataset and cannot be redefined; pick another name")
        if not overwrite:
            raise ValueError(f"dataset {spec.name!r} is already registered with different settings "
                             "(pass overwrite=True to replace it)")
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a user dataset (tests, notebooks); MMEB-V2 entries stay."""
    if name in MMEB_V2_NAMES:
        raise ValueError(f"{name!r} is an MMEB-V2 dataset")
    _REGISTRY.pop(name, None)


INFO_FIELDS = {"num_queries"}


def load_manifest(path: str | Path, *, overwrite: bool = False) -> list[DatasetSpec]:
    """Register the datasets of a ``manifest.json`` (a list of objects, or ``{"datasets": [...]}``).

    Each object has the :class:`DatasetSpec` fields (``format`` and ``path`` included) and may carry the
    informational ``num_queries`` that mini-MMEB writes. A relative ``path`` is resolved against the
    manifest's folder, so a data dir can be moved as a whole.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    entries = data.get("datasets", []) if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a list of datasets or {{'datasets': [...]}}")
    allowed = {f.name for f in fields(DatasetSpec)}
    out = []
    for i, entry in enumerate(entries):
        unknown = set(entry) - allowed - INFO_FIELDS
        if unknown:
            raise ValueError(f"{path}: dataset #{i} has unknown fields {sorted(unknown)} (allowed: {sorted(allowed)})")
        entry = {k: v for k, v in entry.items() if k not in INFO_FIELDS}
        entry.setdefault("query_instruction", "")
        entry.setdefault("target_instruction", "")
        entry.setdefault("ntp_side", "none")
        try:
            for key in ("path", "media_root"):
                if entry.get(key) is not None and not Path(entry[key]).is_absolute():
                    entry[key] = str(path.parent.resolve() / entry[key])
            out.append(register(DatasetSpec(**entry), overwrite=overwrite))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: dataset #{i} ({entry.get('name', '?')}): {e}") from e
    return out
