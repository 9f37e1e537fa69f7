"""The MMEB-V2 dataset registry and manifests."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import pytest

from btoks.eval import registry
from btoks.eval.registry import MMEB_V2, DatasetSpec


def test_counts_per_modality_and_meta_task() -> None:
    assert len(MMEB_V2) == 78 and len({s.name for s in MMEB_V2}) == 78
    assert Counter(s.modality for s in MMEB_V2) == {"image": 36, "video": 18, "visdoc": 24}
    assert Counter((s.modality, s.meta_task) for s in MMEB_V2) == {
        ("image", "classification"): 10, ("image", "vqa"): 10, ("image", "retrieval"): 12,
        ("image", "grounding"): 4,
        ("video", "classification"): 5, ("video", "qa"): 5, ("video", "retrieval"): 5,
        ("video", "moment_retrieval"): 3,
        ("visdoc", "visdoc"): 24,
    }
    assert len({(s.modality, s.meta_task) for s in MMEB_V2}) == 9
    assert Counter(s.group for s in MMEB_V2 if s.modality == "visdoc") == {
        "ViDoRe-V1": 10, "ViDoRe-V2": 4, "VisRAG": 6, "VisDoc-OOD": 4}


def test_metrics_formats_and_instructions() -> None:
    for s in MMEB_V2:
        assert s.metric == ("ndcg@5" if s.modality == "visdoc" else "hit@1")
        assert s.format == ("visdoc" if s.modality == "visdoc" else "local")
        assert s.query_instruction, s.name
    assert registry.get("ImageNet-1K").query_instruction == "Represent the given image for classification"
    assert registry.get("MSR-VTT").query_instruction == "Find a video that contains the following visual content:"
    doc = registry.get("ViDoRe_arxivqa")
    assert doc.query_instruction == "Find a document image that matches the given query:"
    assert doc.target_instruction == "Understand the content of the provided document image."


def test_design_names_present() -> None:
    for name in ["ImageNet-1K", "N24News", "HatefulMemes", "VOC2007", "SUN397", "Place365", "ImageNet-A",
                 "ImageNet-R", "ObjectNet", "Country211", "OK-VQA", "A-OKVQA", "DocVQA", "InfographicsVQA",
                 "ChartQA", "Visual7W", "ScienceQA", "VizWiz", "GQA", "TextVQA", "VisDial", "CIRR",
                 "VisualNews_t2i", "VisualNews_i2t", "MSCOCO_t2i", "MSCOCO_i2t", "NIGHTS", "WebQA", "FashionIQ",
                 "Wiki-SS-NQ", "OVEN", "EDIS", "MSCOCO", "RefCOCO", "RefCOCO-Matching", "Visual7W-Pointing",
                 "K700", "SmthSmthV2", "HMDB51", "UCF101", "Breakfast", "MVBench", "Video-MME", "NExTQA",
                 "EgoSchema", "ActivityNetQA", "DiDeMo", "MSR-VTT", "MSVD", "VATEX", "YouCook2", "QVHighlight",
                 "Charades-STA", "MomentSeeker", "ViDoSeek-page", "ViDoSeek-doc", "MMLongBench-page",
                 "MMLongBench-doc"]:
        assert registry.get(name).name == name
    # short visual-document names of the design brief resolve through aliases
    assert registry.get("arxivqa").name == "ViDoRe_arxivqa"
    assert registry.get("esg_human_labeled").name == "ViDoRe_esg_reports_human_labeled_v2"
    assert registry.get("VisRAG-ChartQA").name == "VisRAG_ChartQA"
    assert registry.get("ChartQA").modality == "image"  # the image VQA set keeps the bare name
    assert registry.get("imagenet_1k").name == "ImageNet-1K"  # case / punctuation-insensitive


def test_ntp_sides() -> None:
    side = {s.name: s.ntp_side for s in MMEB_V2}
    for n in ("CIRR", "NIGHTS"):
        assert side[n] == "none"
    for n in ("ImageNet-1K", "OK-VQA", "MSCOCO_i2t", "VisualNews_i2t", "K700", "MVBench"):
        assert side[n] == "positive"
    for n in ("MSCOCO_t2i", "VisualNews_t2i", "MSR-VTT", "RefCOCO", "Visual7W-Pointing", "ViDoRe_docvqa"):
        assert side[n] == "query"
    assert all(s.ntp_side == "query" for s in MMEB_V2 if s.modality == "visdoc")
    assert all(s.ntp_side == "positive" for s in MMEB_V2 if s.meta_task in ("classification", "vqa", "qa"))


def test_get_unknown_lists_near_matches() -> None:
    with pytest.raises(KeyError, match=r"ImageNet-1K.*ImageNet-R|ImageNet-R.*ImageNet-1K"):
        registry.get("ImageNet1")
    with pytest.raises(KeyError, match="unknown dataset 'zzzz'"):
        registry.get("zzzz")


def test_spec_frozen_and_validated() -> None:
    spec = registry.get("CIRR")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.metric = "hit@5"  # type: ignore[misc]
    with pytest.raises(ValueError, match="meta_task"):
        DatasetSpec("x", "image", "qa", "hit@1", "", "", "none")
    with pytest.raises(ValueError, match="metric"):
        DatasetSpec("x", "image", "vqa", "acc", "", "", "none")
    with pytest.raises(ValueError, match="ntp_side"):
        DatasetSpec("x", "image", "vqa", "hit@1", "", "", "target")
    with pytest.raises(ValueError, match="modality"):
        DatasetSpec("x", "audio", "vqa", "hit@1", "", "", "none")


def test_register_and_filters() -> None:
    spec = DatasetSpec("tmp-reg", "video", "qa", "hit@1", "Q", "T", "positive")
    try:
        registry.register(spec)
        registry.register(spec)  # identical: no-op
        assert registry.get("tmp-reg") is spec
        with pytest.raises(ValueError, match="already registered"):
            registry.register(dataclasses.replace(spec, query_instruction="other"))
        registry.register(dataclasses.replace(spec, query_instruction="other"), overwrite=True)
        assert registry.get("tmp-reg").query_instruction == "other"
        assert "tmp-reg" in registry.names("video", "qa")
        assert "tmp-reg" not in registry.names("video", "qa", mmeb_only=True)
        with pytest.raises(ValueError, match="MMEB-V2"):
            registry.register(dataclasses.replace(registry.get("CIRR"), metric="hit@5"), overwrite=True)
    finally:
        registry.unregister("tmp-reg")
    assert len(registry.names(mmeb_only=True)) == 78


def test_load_manifest(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"datasets": [
        {"name": "mini-cls", "modality": "image", "meta_task": "classification", "metric": "hit@1",
         "query_instruction": "Represent the given image for classification", "target_instruction": "",
         "ntp_side": "positive", "format": "local", "path": "cls.jsonl"},
        {"name": "mini-docs", "modality": "visdoc", "meta_task": "visdoc", "metric": "ndcg@5",
         "query_instruction": "q", "target_instruction": "t", "ntp_side": "query", "path": "/abs/docs"},
    ]}))
    try:
        specs = registry.load_manifest(tmp_path / "manifest.json")
        assert [s.name for s in specs] == ["mini-cls", "mini-docs"]
        assert registry.get("mini-cls").path == str(tmp_path / "cls.jsonl")
        assert registry.get("mini-docs").path == "/abs/docs" and registry.get("mini-docs").format == "visdoc"
    finally:
        for n in ("mini-cls", "mini-docs"):
            registry.unregister(n)
    (tmp_path / "bad.json").write_text(json.dumps([{"name": "b", "modality": "image", "meta_task": "vqa",
                                                     "metric": "hit@1", "colour": "red"}]))
    with pytest.raises(ValueError, match=r"unknown fields.*colour"):
        registry.load_manifest(tmp_path / "bad.json")
    (tmp_path / "bad2.json").write_text(json.dumps([{"name": "b2", "modality": "image", "meta_task": "qa",
                                                      "metric": "hit@1"}]))
    with pytest.raises(ValueError, match=r"bad2.json: dataset #0 \(b2\).*meta_task"):
        registry.load_manifest(tmp_path / "bad2.json")


def test_reference_facts_per_dataset() -> None:
    """Family, ranking, published folders, hub source and reference file for every one of the 78; the
    reference harness's instructions to the character (TIGER-AI-Lab/VLM2Vec src/data/eval_dataset/)."""
    from btoks.eval.mmeb_labels import MVBENCH_CONFIGS, VIDEO_LABELS

    for s in MMEB_V2:
        assert s.family in registry.FAMILIES and s.folders and s.hf and s.reference.startswith("src/data/eval_dataset/")
    ranking = {s.name: s.ranking for s in MMEB_V2}
    assert {n for n, r in ranking.items() if r == "global"} == {
        "K700", "HMDB51", "UCF101", "Breakfast", "DiDeMo", "MSR-VTT", "MSVD", "VATEX", "YouCook2",
        *(s.name for s in MMEB_V2 if s.modality == "visdoc")}
    get = registry.get
    assert get("HMDB51").query_instruction == "What actions or objects interactions are the person in the video doing?"
    assert get("Breakfast").query_instruction == "Recognize the breakfast type that the person is cooking in the video. "
    assert get("MSVD").query_instruction == "Find the video snippet that corresponds to the given summary:"
    assert get("DiDeMo").query_instruction == "Find a video that includes the following described scenes:"
    assert get("VATEX").query_instruction == "Select a video that fits the description provided:"
    assert get("YouCook2").query_instruction == ("Find a video that demonstrates the following action while making "
                                                 "a recipe:")
    assert get("QVHighlight").target_instruction == "Understand the content of the provided video."
    assert get("MomentSeeker").target_instruction == "Understand the content of the provided video clip."
    assert dict(get("MomentSeeker").instruction_variants)["image"] == ("Select the video clip that aligns with the "
                                                                       "given text and image:")
    assert get("NExTQA").query_instruction.endswith("Return only the exact text of your chosen answer. Question: ")
    assert get("NExTQA").folders == ("NExTQA/MC",) and get("MSR-VTT").hf == ("VLM2Vec/MSR-VTT", "test_1k")
    assert get("YouCook2").split == "val" and get("MVBench").split == "train" and get("VisRAG_PlotQA").split == "train"
    assert get("K700").hf == ("VLM2Vec/Kinetics-700", "") and get("Kinetics-700").name == "K700"
    assert get("SSv2").name == "SmthSmthV2" and get("Charades_STA").name == "Charades-STA"
    assert get("ViDoSeek-page-fixed").name == "ViDoSeek-page" and get("esg_reports_v2").name.endswith("multilingual")
    assert get("ViDoRe_esg_reports_v2").language == "english" and "ViDoRe_esg_reports_v2" not in registry.MMEB_V2_NAMES
    assert {k: len(v) for k, v in VIDEO_LABELS.items()} == {"K700": 700, "SmthSmthV2": 174, "UCF101": 101,
                                                             "HMDB51": 51, "Breakfast": 10}
    assert len(MVBENCH_CONFIGS) == 20
