"""Build a tiny MMEB-V2 tree in the layout the Hugging Face repositories and the MMEB-V2 archives publish, from
offline data (PIL-drawn images, numpy): parquet tables with only the published columns, one shared
``image-tasks/`` root, frame folders (``frame_%04d.jpg``; QA sets ``%04d.jpeg``), HF config sub-folders
(``MSR-VTT/test_1k``, ``NExTQA/MC``, ``MVBench/<config>``) and BEIR ``corpus/queries/qrels`` shards with the HF
image struct. A few rows per family; used by the reader, runner and ``btoks data check`` tests."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

ROWS = 3


def png(path: Path, k: int, size: int = 28) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), ((70 * k) % 256, (255 - 50 * k) % 256, (30 + 90 * k) % 256)).save(path)


def png_bytes(k: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (28, 28), ((40 * k) % 256, 90, (200 - 30 * k) % 256)).save(buf, format="PNG")
    return buf.getvalue()


def frames(folder: Path, k: int, n: int = 3, pattern: str = "frame_{:04d}.jpg") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (28, 28), ((30 * k + 40 * i) % 256, 100, 50)).save(folder / pattern.format(i + 1))


def table(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def _image_sets(root: Path) -> None:
    img = root / "image-tasks"
    for k in range(ROWS):
        png(img / "ImageNet-1K" / f"q{k}.jpg", k)
        png(img / "MSCOCO_t2i" / f"c{k}.jpg", k + 3)
        png(img / "RefCOCO-Matching" / f"c{k}.jpg", k + 6)
    labels = ["tench", "goldfish", "great white shark"]
    table(root / "ImageNet-1K" / "test-00000-of-00001.parquet", [
        {"qry_inst": "<|image_1|> Represent the given image for classification", "qry_text": "",
         "qry_img_path": f"ImageNet-1K/q{k}.jpg", "tgt_text": [labels[k], *(x for x in labels if x != labels[k])]}
        for k in range(ROWS)])
    # OK-VQA: blank candidate texts are candidates, and a repeat of the answer counts as the answer
    table(root / "MMEB_Test_Instruct" / "OK-VQA" / "test-00000-of-00001.parquet", [
        {"qry_inst": "<|image_1|> Represent the given image with the following question:",
         "qry_text": f"what is shown {k}?", "qry_img_path": f"ImageNet-1K/q{k}.jpg",
         "tgt_text": [f"answer {k}", "", "", f"answer {k}", "other"]} for k in range(ROWS)])
    table(root / "MSCOCO_i2t" / "test-00000-of-00001.parquet", [
        {"qry_inst": "<|image_1|> Find an image caption describing the given everyday image", "qry_text": "",
         "qry_img_path": f"ImageNet-1K/q{k}.jpg", "tgt_text": [f"a caption {k}", f"a caption {k + 1}"]}
        for k in range(ROWS)])
    table(root / "MSCOCO_t2i" / "test-00000-of-00001.parquet", [
        {"qry_inst": "Find me an everyday image that matches the given caption:", "qry_text": f"picture {k}",
         "tgt_inst": "<|image_1|> Represent the given image.", "tgt_text": ["", "", ""],
         "tgt_img_path": [f"MSCOCO_t2i/c{(k + j) % ROWS}.jpg" for j in range(3)]} for k in range(ROWS)])
    table(root / "RefCOCO-Matching" / "test-00000-of-00001.parquet", [
        {"qry_inst": "<|image_1|> Select the portion of the image that matches the description:",
         "qry_text": f"the object {k}", "qry_img_path": f"ImageNet-1K/q{k}.jpg",
         "tgt_inst": "<|image_1|> Represent the given cropped image of the object with its description:",
         "tgt_text": [f'"object {k}"', f"object {k + 1}"],
         "tgt_img_path": [f"RefCOCO-Matching/c{k}.jpg", f"RefCOCO-Matching/c{k}.jpg"]} for k in range(ROWS)])


def _video_sets(root: Path) -> None:
    fr = root / "video-tasks" / "frames"
    ucf = ["Kayaking", "PlayingDaf", "BoxingSpeedBag"]
    for k in range(ROWS):
        frames(fr / "video_cls" / "UCF101" / f"v_{k}", k)
        frames(fr / "video_cls" / "SSv2" / str(100 + k), k)
        for name in ("MSR-VTT", "MSVD", "DiDeMo", "VATEX", "YouCook2"):
            frames(fr / "video_ret" / name / f"vid{k}", k + 1)
        for name in ("NExTQA", "Video-MME", "EgoSchema", "ActivityNetQA"):
            vid = f"v_vid{k}" if name == "ActivityNetQA" else f"vid{k}"
            frames(fr / "video_qa" / name / vid, k, pattern="{:04d}.jpeg")
        for cfg in ("action_sequence", "object_shuffle"):
            frames(fr / "video_qa" / "MVBench" / cfg / f"clip{k}.mp4", k, pattern="{:04d}.jpeg")
        for name in ("QVHighlight", "Charades_STA"):
            clip = fr / "video_mret" / name / f"clip{k}"
            frames(clip / "query", k, n=4)
            frames(clip / "positive_clip", k)
            for j in range(2):
                frames(clip / f"negative_clip_{j}", k + j + 1)
        ms = fr / "video_mret" / "MomentSeeker"
        frames(ms / "video_frames" / f"src_m{k}_pos", k)
        frames(ms / "video_frames" / f"src_m{k}_neg", k + 1)
        frames(ms / "video_frames" / f"src_q{k}", k + 2)
        png(ms / f"query_img{k}.jpg", k)
    table(root / "UCF101" / "test-00000-of-00001.parquet",
          [{"video_id": f"v_{k}", "pos_text": ucf[k]} for k in range(ROWS)])
    table(root / "SmthSmthV2" / "test-00000-of-00001.parquet", [
        {"video_id": 100 + k, "pos_text": f"Moving thing {k}", "neg_text": [f"Moving thing {j}" for j in range(ROWS)]}
        for k in range(ROWS)])
    table(root / "MSR-VTT" / "test_1k" / "test-00000-of-00001.parquet", [
        {"video_id": f"vid{k}", "video": f"vid{k}.mp4", "caption": f"a man rides {k}"} for k in range(ROWS)])
    table(root / "MSVD" / "test-00000-of-00001.parquet", [
        {"video_id": f"vid{k}", "video": f"vid{k}.avi", "caption": [f"a dog runs {k}", "x"]} for k in range(ROWS)])
    table(root / "DiDeMo" / "test-00000-of-00001.parquet", [
        {"video": f"videos/vid{k}.mp4", "caption": f"the camera pans {k}"} for k in range(ROWS)])
    table(root / "VATEX" / "test-00000-of-00001.parquet", [
        {"videoID": f"vid{k}", "enCap": [f"people dance {k}", "y"]} for k in range(ROWS)])
    table(root / "YouCook2" / "val-00000-of-00001.parquet", [
        {"id": f"vid{k}", "video_path": f"validation/x/vid{k}.mp4", "sentence": f"add salt {k}"}
        for k in range(ROWS)])
    table(root / "NExTQA" / "MC" / "test-00000-of-00001.parquet", [
        {"video": f"vid{k}", "question": f"why {k}", "answer": k % 5, "qid": k, "type": "CW",
         **{f"a{i}": f"option {i}" for i in range(5)}} for k in range(ROWS)])
    table(root / "Video-MME" / "test-00000-of-00001.parquet", [
        {"videoID": f"vid{k}", "question": f"what {k}?", "options": ["A. red", "B. green", "C. blue", "D. none"],
         "answer": "ABCD"[k], "question_id": f"{k}", "domain": "d", "sub_category": "s"} for k in range(ROWS)])
    table(root / "EgoSchema" / "Subset" / "test-00000-of-00001.parquet", [
        {"video_idx": f"vid{k}", "question": f"what did c do {k}?", "answer": str(k),
         "question_idx": str(k), "option": [f"{i}. c does {i}" for i in range(5)]} for k in range(ROWS)])
    for cfg in ("action_sequence", "object_shuffle"):
        table(root / "MVBench" / cfg / "train-00000-of-00001.parquet", [
            {"video": f"clip{k}.mp4", "question": f"which {k}?", "candidates": ["left", "right", "up"],
             "answer": ["left", "right", "up"][k]} for k in range(ROWS)])
    table(root / "ActivityNetQA" / "test-00000-of-00001.parquet", [
        {"video_name": f"vid{k}", "question": f"is it sunny {k}", "answer": "yes" if k % 2 else "no",
         "question_id": f"q{k}", "type": 1} for k in range(ROWS)])
    for name in ("QVHighlight", "Charades-STA"):
        table(root / name / "test-00000-of-00001.parquet", [
            {"query": f"a person opens a door {k}", "video_path": f"videos/clip{k}.mp4"} for k in range(ROWS)])
    kinds = ["", "src/q0.mp4", "img2.jpg"]
    table(root / "MomentSeeker" / "test-00000-of-00001.parquet", [
        {"query": f"find the moment {k}", "input_frames": kinds[k],
         "positive_frames": [{"output_path": f"src/m{k}_pos.mp4"}],
         "negative_frames": [{"output_path": f"src/m{k}_neg.mp4"}]} for k in range(ROWS)])


def _beir(folder: Path, split: str, ids: list, queries: list[dict], qrels: list[dict]) -> None:
    table(folder / "corpus" / f"{split}-00000-of-00001.parquet",
          [{"corpus-id": c, "image": {"bytes": png_bytes(i), "path": f"{c}.png"}} for i, c in enumerate(ids)])
    table(folder / "queries" / f"{split}-00000-of-00001.parquet", queries)
    table(folder / "qrels" / f"{split}-00000-of-00001.parquet", qrels)


def _visdoc_sets(root: Path) -> None:
    _beir(root / "arxivqa_test_subsampled_beir", "test", [10, 11, 12, 13],
          [{"query-id": k, "query": f"what does figure {k} show?"} for k in range(ROWS)],
          [{"query-id": k, "corpus-id": 10 + k, "score": 1} for k in range(ROWS)])
    _beir(root / "esg_reports_v2", "test", [0, 1, 2],
          [{"query-id": k, "query": f"emissions {k}", "language": ["english", "french", "german"][k]}
           for k in range(ROWS)],
          [{"query-id": k, "corpus-id": k, "score": 2 - k % 2} for k in range(ROWS)] +
          [{"query-id": 0, "corpus-id": 1, "score": 1}])
    _beir(root / "VisRAG-Ret-Test-ArxivQA", "train", ["a.png", "b.png", "c.png"],
          [{"query-id": f"q{k}", "query": f"value of {k}?"} for k in range(ROWS)],
          [{"query-id": f"q{k}", "corpus-id": "abc"[k] + ".png", "score": 1} for k in range(ROWS)])


EXPECTED = {
    # dataset -> (modality, meta_task)
    "ImageNet-1K": ("image", "classification"), "OK-VQA": ("image", "vqa"), "MSCOCO_i2t": ("image", "retrieval"),
    "MSCOCO_t2i": ("image", "retrieval"), "RefCOCO-Matching": ("image", "grounding"),
    "UCF101": ("video", "classification"), "SmthSmthV2": ("video", "classification"),
    "MSR-VTT": ("video", "retrieval"), "MSVD": ("video", "retrieval"), "DiDeMo": ("video", "retrieval"),
    "VATEX": ("video", "retrieval"), "YouCook2": ("video", "retrieval"), "NExTQA": ("video", "qa"),
    "Video-MME": ("video", "qa"), "EgoSchema": ("video", "qa"), "MVBench": ("video", "qa"),
    "ActivityNetQA": ("video", "qa"), "QVHighlight": ("video", "moment_retrieval"),
    "Charades-STA": ("video", "moment_retrieval"), "MomentSeeker": ("video", "moment_retrieval"),
    "ViDoRe_arxivqa": ("visdoc", "visdoc"), "ViDoRe_esg_reports_v2_multilingual": ("visdoc", "visdoc"),
    "VisRAG_ArxivQA": ("visdoc", "visdoc"),
}


def build_published(root: Path) -> Path:
    """The whole tiny tree under ``root`` (``EXPECTED`` lists its datasets)."""
    _image_sets(root)
    _video_sets(root)
    _visdoc_sets(root)
    return root
