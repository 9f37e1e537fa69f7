"""The 78 MMEB-V2 datasets (36 image, 18 video, 24 visual-document) plus user datasets from a manifest.

This is the one place for per-dataset facts. A :class:`DatasetSpec` says how a dataset is scored (modality,
meta-task, metric, ranking over each row's own candidates or over all of them), which instructions embed its two
sides, which side's text the generative (GIC) loss predicts (``ntp_side``, design §1), and, for MMEB-V2, where
the published files live (folder names as the Hugging Face repositories and the VLM2Vec download script lay
them out, config sub-folders included), which reader *family* parses them, the hub repository it comes from,
and the file of the reference harness (TIGER-AI-Lab/VLM2Vec) whose behaviour it follows. Instructions are the
reference's strings, character for character; label sets live in :mod:`btoks.eval.mmeb_labels`.
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
RANKINGS = ("local", "global")
FAMILIES = (
    "image_cls", "image_qa", "image_i2t", "image_t2i", "image_i2i_vg",
    "video_cls", "video_ssv2", "msrvtt", "msvd", "didemo", "vatex", "youcook2",
    "nextqa", "videomme", "egoschema", "mvbench", "activitynetqa", "moment_retrieval", "momentseeker",
    "vidore", "visrag",
)
"""Reader families of the published layout (one per reference loader); ``""`` = generic btoks tables."""
_METRIC_RE = re.compile(r"^(hit|ndcg|recall|precision|map|mrr)@\d+$")
REFERENCE_REPO = "TIGER-AI-Lab/VLM2Vec"


@dataclass(frozen=True)
class DatasetSpec:
    """How one dataset is read, embedded and scored.

    ``format`` is ``local`` (generic rows with their own candidates) or ``visdoc`` (a BEIR folder) for data
    without a ``family``; ``path`` is where its data lives relative to the data root (``None``: found from
    ``folders`` or the dataset name). ``ranking`` is ``local`` (each query ranks its own row's candidates) or
    ``global`` (every query ranks the union of all candidates / the corpus). ``group`` is a finer reporting
    group (ViDoRe-V1/V2, VisRAG, VisDoc-OOD) that does not enter the MMEB aggregation.
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
    """Folder media paths are relative to (default: the dataset's own folder, or the family's published
    media folder under the data root)."""
    family: str = ""
    ranking: str = ""
    folders: tuple[str, ...] = ()
    """Published annotation folders relative to the data root, first found wins (``MSR-VTT/test_1k``)."""
    split: str = "test"
    media: tuple[str, ...] = ()
    """Published media folders relative to the media root, first existing wins (``image-tasks``)."""
    hf: tuple[str, ...] = ()
    """Hub source: ``(repo, config)``; an empty config means the repository's default config / all files."""
    language: str | None = None
    """Keep only queries of this language (the reference's ViDoRe v2 English subsets)."""
    instruction_variants: tuple[tuple[str, str], ...] = ()
    """Query instructions by query kind where a set mixes kinds (MomentSeeker: text / image / video)."""
    reference: str = ""
    """The reference harness file whose reading and scoring this dataset follows."""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("DatasetSpec.name must not be empty")
        if self.modality not in MODALITIES:
            raise ValueError(f"{self.name}: modality {self.modality!r} not in {MODALITIES}")
        if self.meta_task not in META_TASKS[self.modality]:
            raise ValueError(f"{self.name}: meta_task {self.meta_task!r} not in {META_TASKS[self.modality]} "
                             f"for modality {self.modality!r}")
        if not _METRIC_RE.match(self.metric):
            raise ValueError(f"{self.name}: metric {self.metric!r} is not hit@k, ndcg@k, recall@k, precision@k, "
                             "map@k or mrr@k")
        if self.ntp_side not in NTP_SIDES:
            raise ValueError(f"{self.name}: ntp_side {self.ntp_side!r} not in {NTP_SIDES}")
        if not self.format:
            object.__setattr__(self, "format", "visdoc" if self.modality == "visdoc" else "local")
        if self.format not in FORMATS:
            raise ValueError(f"{self.name}: format {self.format!r} not in {FORMATS}")
        if self.family and self.family not in FAMILIES:
            raise ValueError(f"{self.name}: family {self.family!r} not in {FAMILIES}")
        if not self.ranking:
            object.__setattr__(self, "ranking", "global" if self.format == "visdoc" else "local")
        if self.ranking not in RANKINGS:
            raise ValueError(f"{self.name}: ranking {self.ranking!r} not in {RANKINGS}")
        for key in ("folders", "media", "hf", "instruction_variants"):  # JSON manifests give lists
            value = getattr(self, key)
            if not isinstance(value, tuple):
                object.__setattr__(self, key, tuple(tuple(v) if isinstance(v, list) else v for v in value))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- the MMEB-V2 table

_EVAL = "src/data/eval_dataset/"
_QA_PROMPT = ("Given a video and a question, select the most accurate answer from the provided candidates. "
              "Return only the exact text of your chosen answer. Question: ")
_VID_T = "Understand the content of the provided video."
_DOC_Q = "Find a document image that matches the given query:"
_DOC_T = "Understand the content of the provided document image."
_IMG = "Represent the given image"
_QA_IMG = "Represent the given image with the following question:"
_CROP = "Represent the given cropped image of the object"
_WIKI_T = "Represent the given Wikipedia image with related text information:"
_IMAGE_MEDIA = ("image-tasks/MMEB", "image-tasks")  # the archive unpacks to MMEB/; the script moves it up

# Image rows carry their own instructions (``qry_inst`` / ``tgt_inst``), which the reference uses; the ones
# below only fill rows without any (VLM2Vec-V2 wording).
# (name, meta_task, query_instruction, target_instruction, ntp_side, family)
_IMAGE: list[tuple[str, str, str, str, str, str]] = [
    ("ImageNet-1K", "classification", "Represent the given image for classification", "", "positive", "image_cls"),
    ("N24News", "classification",
     "Represent the given news image with the following caption for domain classification:", "", "positive",
     "image_cls"),
    ("HatefulMemes", "classification",
     "Represent the given image for binary classification to determine whether it constitutes hateful speech "
     "or not", "", "positive", "image_cls"),
    ("VOC2007", "classification", "Identify the object shown in the image", "", "positive", "image_cls"),
    ("SUN397", "classification", "Identify the scene shown in the image", "", "positive", "image_cls"),
    ("Place365", "classification", "Identify the scene shown in the image", "", "positive", "image_cls"),
    ("ImageNet-A", "classification", "Represent the given image for classification", "", "positive", "image_cls"),
    ("ImageNet-R", "classification", "Represent the given image for classification", "", "positive", "image_cls"),
    ("ObjectNet", "classification", "Identify the object shown in the image", "", "positive", "image_cls"),
    ("Country211", "classification", "Identify the country depicted in the image", "", "positive", "image_cls"),
    *[(n, "vqa", _QA_IMG, "", "positive", "image_qa") for n in (
        "OK-VQA", "A-OKVQA", "DocVQA", "InfographicsVQA", "ChartQA", "Visual7W", "ScienceQA", "VizWiz", "GQA",
        "TextVQA")],
    ("VisDial", "retrieval",
     "Represent the given dialogue about an image, which is used for image retrieval:", _IMG, "query",
     "image_t2i"),
    ("CIRR", "retrieval", "Given an image, find a similar everyday image with the described changes:", _IMG,
     "none", "image_i2i_vg"),
    ("VisualNews_t2i", "retrieval", "Retrieve an image of this news caption:", _IMG, "query", "image_t2i"),
    ("VisualNews_i2t", "retrieval", "Find a caption for the news in the given photo", "", "positive",
     "image_i2t"),
    ("MSCOCO_t2i", "retrieval", "Find me an everyday image that matches the given caption:", _IMG, "query",
     "image_t2i"),
    ("MSCOCO_i2t", "retrieval", "Find an image caption describing the given everyday image", "", "positive",
     "image_i2t"),
    ("NIGHTS", "retrieval", "Find a day-to-day image that looks similar to the provided image", _IMG, "none",
     "image_i2i_vg"),
    ("WebQA", "retrieval", "Find a Wikipedia image-passage pair that answers this question:",
     "Represent the given image with related text information:", "query", "image_t2i"),
    ("FashionIQ", "retrieval", "Find an image to match the fashion image and style note:", _IMG, "none",
     "image_i2i_vg"),
    ("Wiki-SS-NQ", "retrieval", "Find the document screenshot that can answer the given query:",
     "Represent the given document screenshot", "query", "image_t2i"),
    ("OVEN", "retrieval",
     "Retrieve a Wikipedia image-description pair that provides evidence for the question of this image:",
     _WIKI_T, "positive", "image_i2i_vg"),
    ("EDIS", "retrieval", "Find a news image that matches the provided caption:",
     "Represent the given image with related text information:", "query", "image_t2i"),
    ("MSCOCO", "grounding", "Select the portion of the image that isolates the object of the given label:", _CROP,
     "query", "image_i2i_vg"),
    ("RefCOCO", "grounding", "Select the portion of the image that follows the language expressions:", _CROP,
     "query", "image_i2i_vg"),
    ("RefCOCO-Matching", "grounding", "Select the portion of the image that matches the description:",
     "Represent the given cropped image of the object with its description:", "query", "image_i2i_vg"),
    ("Visual7W-Pointing", "grounding", "Select the portion of the image that answers the given question:", _CROP,
     "query", "image_i2i_vg"),
]
_IMAGE_REF = {"image_cls": "image_cls_dataset.py", "image_qa": "image_qa_dataset.py",
              "image_i2t": "image_i2t_eval.py", "image_t2i": "image_t2i_eval.py",
              "image_i2i_vg": "image_i2i_vg_dataset.py"}


def _image_spec(name: str, meta: str, q: str, t: str, side: str, family: str) -> DatasetSpec:
    return DatasetSpec(name, "image", meta, "hit@1", q, t, side, family=family, ranking="local",
                       folders=(name, f"MMEB_Test_Instruct/{name}"), media=_IMAGE_MEDIA,
                       hf=("ziyjiang/MMEB_Test_Instruct", name), reference=_EVAL + _IMAGE_REF[family])


def _frames(task: str, *names: str) -> tuple[str, ...]:
    """Frame folders as the MMEB-V2 archives unpack (``video-tasks/frames/<task>/<name>``), then the flat
    ``video-tasks/frames/<name>`` some copies use; retrieval sets also where the video_ret archive's own
    internal path puts them (``data/ziyan/video_retrieval/<name>/frames``, as the authors' converter reads)."""
    out = [*(f"video-tasks/frames/{task}/{n}" for n in names), *(f"video-tasks/frames/{n}" for n in names)]
    if task == "video_ret":
        out += [f"video-tasks/frames/{pre}data/ziyan/video_retrieval/{n}/frames" for pre in ("video_ret/", "")
                for n in names]
    return tuple(out)


# (name, meta_task, family, ranking, query_instruction, target_instruction, ntp_side, folders, split, hf,
#  frame folders, reference file)
_VIDEO: list[tuple[Any, ...]] = [
    ("K700", "classification", "video_cls", "global", "Recognize the category of the video content.", "",
     "positive", ("Kinetics-700", "K700", "video-tasks/data/k700"), "test", ("VLM2Vec/Kinetics-700", ""),
     _frames("video_cls", "K700", "Kinetics-700"), "video_classification_datasets.py"),
    ("SmthSmthV2", "classification", "video_ssv2", "local",
     "What actions or object interactions are being performed by the person in the video?", "", "positive",
     ("SmthSmthV2", "SSv2", "video-tasks/data/ssv2"), "test", ("VLM2Vec/SmthSmthV2", ""),
     _frames("video_cls", "SSv2", "SmthSmthV2"), "ssv2_dataset.py"),
    ("HMDB51", "classification", "video_cls", "global",
     "What actions or objects interactions are the person in the video doing?", "", "positive",
     ("HMDB51", "video-tasks/data/hmdb51"), "test", ("VLM2Vec/HMDB51", ""), _frames("video_cls", "HMDB51"),
     "video_classification_datasets.py"),
    ("UCF101", "classification", "video_cls", "global",
     "What activities or sports are being performed by the person in the video?", "", "positive",
     ("UCF101", "video-tasks/data/ucf101"), "test", ("VLM2Vec/UCF101", ""), _frames("video_cls", "UCF101"),
     "video_classification_datasets.py"),
    ("Breakfast", "classification", "video_cls", "global",
     "Recognize the breakfast type that the person is cooking in the video. ", "", "positive",
     ("Breakfast", "video-tasks/data/breakfast"), "test", ("VLM2Vec/Breakfast", ""),
     _frames("video_cls", "Breakfast"), "video_classification_datasets.py"),
    ("MVBench", "qa", "mvbench", "local", _QA_PROMPT, "", "positive", ("MVBench",), "train",
     ("VLM2Vec/MVBench", ""), _frames("video_qa", "MVBench"), "mvbench_dataset.py"),
    ("Video-MME", "qa", "videomme", "local", _QA_PROMPT, "", "positive", ("Video-MME",), "test",
     ("VLM2Vec/Video-MME", ""), _frames("video_qa", "Video-MME"), "videomme_dataset.py"),
    ("NExTQA", "qa", "nextqa", "local", _QA_PROMPT, "", "positive", ("NExTQA/MC",), "test",
     ("VLM2Vec/NExTQA", "MC"), _frames("video_qa", "NExTQA"), "nextqa_dataset.py"),
    ("EgoSchema", "qa", "egoschema", "local", _QA_PROMPT, "", "positive", ("EgoSchema/Subset",), "test",
     ("VLM2Vec/EgoSchema", "Subset"), _frames("video_qa", "EgoSchema", "egoschema"), "egoschema_dataset.py"),
    ("ActivityNetQA", "qa", "activitynetqa", "local", _QA_PROMPT, "", "positive",
     ("ActivityNetQA", "video-tasks/data/activitynetqa"), "test", ("VLM2Vec/ActivityNetQA", ""),
     _frames("video_qa", "ActivityNetQA"), "activitynetqa_dataset.py"),
    ("DiDeMo", "retrieval", "didemo", "global", "Find a video that includes the following described scenes:",
     _VID_T, "query", ("DiDeMo",), "test", ("VLM2Vec/DiDeMo", ""), _frames("video_ret", "DiDeMo"),
     "didemo_dataset.py"),
    ("MSR-VTT", "retrieval", "msrvtt", "global", "Find a video that contains the following visual content:",
     _VID_T, "query", ("MSR-VTT/test_1k",), "test", ("VLM2Vec/MSR-VTT", "test_1k"),
     _frames("video_ret", "MSR-VTT"), "msrvtt_dataset.py"),
    ("MSVD", "retrieval", "msvd", "global", "Find the video snippet that corresponds to the given summary:",
     _VID_T, "query", ("MSVD",), "test", ("VLM2Vec/MSVD", ""), _frames("video_ret", "MSVD"), "msvd_dataset.py"),
    ("VATEX", "retrieval", "vatex", "global", "Select a video that fits the description provided:", _VID_T,
     "query", ("VATEX",), "test", ("VLM2Vec/VATEX", ""), _frames("video_ret", "VATEX"), "vatex_dataset.py"),
    ("YouCook2", "retrieval", "youcook2", "global",
     "Find a video that demonstrates the following action while making a recipe:", _VID_T, "query",
     ("YouCook2",), "val", ("lmms-lab/YouCook2", ""), _frames("video_ret", "YouCook2"), "youcook2_dataset.py"),
    ("QVHighlight", "moment_retrieval", "moment_retrieval", "local",
     "Find the clip that corresponds to the described scene in the given video:", _VID_T, "query",
     ("QVHighlight", "video-tasks/data/qvhighlight"), "test", ("VLM2Vec/QVHighlight", ""),
     _frames("video_mret", "QVHighlight"), "moment_retrieval_datasets.py"),
    ("Charades-STA", "moment_retrieval", "moment_retrieval", "local",
     "Find the clip that corresponds to the described scene in the given video:", _VID_T, "query",
     ("Charades-STA", "Charades_STA", "video-tasks/data/charades_sta"), "test", ("VLM2Vec/Charades-STA", ""),
     _frames("video_mret", "Charades_STA", "Charades-STA"), "moment_retrieval_datasets.py"),
    ("MomentSeeker", "moment_retrieval", "momentseeker", "local",
     "Find the clip that corresponds to the given text:", "Understand the content of the provided video clip.",
     "query", ("MomentSeeker",), "test", ("VLM2Vec/MomentSeeker", ""), _frames("video_mret", "MomentSeeker"),
     "momentseeker_dataset.py"),
]
_MOMENTSEEKER_VARIANTS = (
    ("text", "Find the clip that corresponds to the given text:"),
    ("image", "Select the video clip that aligns with the given text and image:"),
    ("video", "Find the clip that corresponds to the given sentence and video segment:"),
)


def _video_spec(name: str, meta: str, family: str, ranking: str, q: str, t: str, side: str,
                folders: tuple[str, ...], split: str, hf: tuple[str, str], media: tuple[str, ...],
                ref: str) -> DatasetSpec:
    return DatasetSpec(name, "video", meta, "hit@1", q, t, side, family=family, ranking=ranking,
                       folders=folders, split=split, media=media, hf=hf, reference=_EVAL + ref,
                       instruction_variants=_MOMENTSEEKER_VARIANTS if family == "momentseeker" else ())


# (official name, group, short alias used in the design brief, hub repo, reader family, language filter)
_VISDOC: list[tuple[str, str, str, str, str]] = [
    ("ViDoRe_arxivqa", "ViDoRe-V1", "arxivqa", "vidore/arxivqa_test_subsampled_beir", "vidore"),
    ("ViDoRe_docvqa", "ViDoRe-V1", "docvqa", "vidore/docvqa_test_subsampled_beir", "vidore"),
    ("ViDoRe_infovqa", "ViDoRe-V1", "infovqa", "vidore/infovqa_test_subsampled_beir", "vidore"),
    ("ViDoRe_tabfquad", "ViDoRe-V1", "tabfquad", "vidore/tabfquad_test_subsampled_beir", "vidore"),
    ("ViDoRe_tatdqa", "ViDoRe-V1", "tatdqa", "vidore/tatdqa_test_beir", "vidore"),
    ("ViDoRe_shiftproject", "ViDoRe-V1", "shiftproject", "vidore/shiftproject_test_beir", "vidore"),
    ("ViDoRe_syntheticDocQA_artificial_intelligence", "ViDoRe-V1", "syntheticDocQA_ai",
     "vidore/syntheticDocQA_artificial_intelligence_test_beir", "vidore"),
    ("ViDoRe_syntheticDocQA_energy", "ViDoRe-V1", "syntheticDocQA_energy",
     "vidore/syntheticDocQA_energy_test_beir", "vidore"),
    ("ViDoRe_syntheticDocQA_government_reports", "ViDoRe-V1", "syntheticDocQA_government",
     "vidore/syntheticDocQA_government_reports_test_beir", "vidore"),
    ("ViDoRe_syntheticDocQA_healthcare_industry", "ViDoRe-V1", "syntheticDocQA_healthcare",
     "vidore/syntheticDocQA_healthcare_industry_test_beir", "vidore"),
    ("ViDoRe_esg_reports_human_labeled_v2", "ViDoRe-V2", "esg_human_labeled", "vidore/esg_reports_human_labeled_v2",
     "vidore"),
    ("ViDoRe_biomedical_lectures_v2_multilingual", "ViDoRe-V2", "biomedical_multilingual",
     "vidore/biomedical_lectures_v2", "vidore"),
    ("ViDoRe_economics_reports_v2_multilingual", "ViDoRe-V2", "economics_multilingual",
     "vidore/economics_reports_v2", "vidore"),
    ("ViDoRe_esg_reports_v2_multilingual", "ViDoRe-V2", "esg_multilingual", "vidore/esg_reports_v2", "vidore"),
    ("VisRAG_ArxivQA", "VisRAG", "VisRAG-ArxivQA", "openbmb/VisRAG-Ret-Test-ArxivQA", "visrag"),
    ("VisRAG_ChartQA", "VisRAG", "VisRAG-ChartQA", "openbmb/VisRAG-Ret-Test-ChartQA", "visrag"),
    ("VisRAG_MP-DocVQA", "VisRAG", "VisRAG-MP-DocVQA", "openbmb/VisRAG-Ret-Test-MP-DocVQA", "visrag"),
    ("VisRAG_SlideVQA", "VisRAG", "VisRAG-SlideVQA", "openbmb/VisRAG-Ret-Test-SlideVQA", "visrag"),
    ("VisRAG_InfoVQA", "VisRAG", "VisRAG-InfoVQA", "openbmb/VisRAG-Ret-Test-InfoVQA", "visrag"),
    ("VisRAG_PlotQA", "VisRAG", "VisRAG-PlotQA", "openbmb/VisRAG-Ret-Test-PlotQA", "visrag"),
    ("ViDoSeek-page", "VisDoc-OOD", "ViDoSeek_page", "VLM2Vec/ViDoSeek-page-fixed", "vidore"),
    ("ViDoSeek-doc", "VisDoc-OOD", "ViDoSeek_doc", "VLM2Vec/ViDoSeek", "vidore"),
    ("MMLongBench-page", "VisDoc-OOD", "MMLongBench_page", "VLM2Vec/MMLongBench-page-fixed", "vidore"),
    ("MMLongBench-doc", "VisDoc-OOD", "MMLongBench_doc", "VLM2Vec/MMLongBench-doc", "vidore"),
]
_VISDOC_REF = {"vidore": "vidore_dataset.py", "visrag": "visrag_dataset.py"}


def _visdoc_spec(name: str, group: str, alias: str, repo: str, family: str, language: str | None = None,
                 ) -> DatasetSpec:
    folder = repo.split("/")[1]
    folders = tuple(dict.fromkeys((folder, name, f"visdoc-tasks/data/{folder}", alias)))
    return DatasetSpec(name, "visdoc", "visdoc", "ndcg@5", _DOC_Q, _DOC_T, "query", group=group, family=family,
                       ranking="global", folders=folders, split="train" if family == "visrag" else "test",
                       hf=(repo, ""), language=language, reference=_EVAL + _VISDOC_REF[family])


MMEB_V2: tuple[DatasetSpec, ...] = (
    *(_image_spec(*row) for row in _IMAGE),
    *(_video_spec(*row) for row in _VIDEO),
    *(_visdoc_spec(n, g, a, r, f) for n, g, a, r, f in _VISDOC),
)
"""The 78 scored MMEB-V2 datasets in benchmark order."""
MMEB_V2_NAMES: frozenset[str] = frozenset(s.name for s in MMEB_V2)

EXTRA: tuple[DatasetSpec, ...] = tuple(
    _visdoc_spec(f"ViDoRe_{base}_v2", "ViDoRe-V2-en", f"{base}_en", f"vidore/{base}_v2", "vidore", "english")
    for base in ("biomedical_lectures", "economics_reports", "esg_reports")
)
"""Reference sets outside the 78 (ViDoRe v2 English-only subsets, the reference's ``language`` filter)."""

_REGISTRY: dict[str, DatasetSpec] = {s.name: s for s in (*MMEB_V2, *EXTRA)}


def _folder_alias(folder: str) -> str:
    """``NExTQA/MC`` -> ``NExTQA`` (config sub-folder), ``video-tasks/data/k700`` -> ``k700``."""
    parts = folder.split("/")
    return parts[-1] if parts[0] in ("video-tasks", "visdoc-tasks", "MMEB_Test_Instruct") else parts[0]


_ALIASES: dict[str, str] = {
    **{_folder_alias(f): s.name for s in MMEB_V2 for f in s.folders},
    **{alias: name for name, _, alias, _, _ in _VISDOC},
}
for _name in _REGISTRY:
    _ALIASES.pop(_name, None)


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
