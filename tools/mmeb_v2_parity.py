"""Check btoks' MMEB-V2 reading and scoring against the reference harness (TIGER-AI-Lab/VLM2Vec), run from its
own source (read from a git checkout or mirror at run time; nothing of it is copied here).

    python tools/mmeb_v2_parity.py loaders TREE --reference VLM2VEC_GIT_DIR
        runs the reference's per-family ``data_prepare`` functions (src/data/eval_dataset/*.py) on the tables of
        TREE, with their heavy imports (datasets, torchvision, cv2, decord) stubbed, and compares query texts
        (backbone media tokens and v1-compat newlines removed), candidate texts, candidate names, answers and
        the frames picked with what ``btoks.data.mmeb_v2.read_dataset`` reads. Frame folders need >= 8 frames
        (the reference's retrieval loaders assume it).
    python tools/mmeb_v2_parity.py scores TREE RUN_DIR --reference VLM2VEC_GIT_DIR
        scores the cached embeddings of a ``btoks eval`` run the way the reference's eval.py does
        (np.argsort(-scores), candidate names, its RankingMetrics) and compares every metric with the run's.

Results measured when this was written are in docs/evaluation.md ("Parity with the reference").
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from btoks.data.media import list_frame_files, uniform_indices
from btoks.data.mmeb_v2 import read_dataset
from btoks.data.readers import EvalLocal
from btoks.eval import registry
from btoks.eval.mmeb_labels import MVBENCH_CONFIGS

BACKBONE = "qwen2_vl"
TOKENS = {"image": "<|image_pad|>", "video": "<|video_pad|>"}


class Reference:
    """Files of the reference checkout (a work tree or a bare mirror)."""

    def __init__(self, root: str) -> None:
        self.root = Path(root)

    def source(self, path: str) -> str:
        if (self.root / path).is_file():
            return (self.root / path).read_text()
        return subprocess.run(["git", "-C", str(self.root), "show", f"HEAD:{path}"], capture_output=True, text=True,
                              check=True).stdout

    def names(self, path: str, wanted: set[str], **env: Any) -> dict[str, Any]:
        """Only the named top-level functions / assignments of a reference file, executed."""
        import os
        import re

        keep = [n for n in ast.parse(self.source(path)).body
                if (isinstance(n, ast.FunctionDef | ast.ClassDef) and n.name in wanted)
                or (isinstance(n, ast.Assign) and any(getattr(t, "id", "") in wanted for t in n.targets))]
        ns: dict[str, Any] = {"os": os, "re": re, "np": np, **env}
        exec(compile(ast.Module(body=keep, type_ignores=[]), path, "exec"), ns)
        return ns

    def module(self, path: str, name: str) -> types.ModuleType:
        m = types.ModuleType(name)
        sys.modules[name] = m
        exec(self.source(path), m.__dict__)
        return m


class _Any:
    def __init__(self, *a: Any, **k: Any) -> None:
        pass


def _stub(name: str, **attrs: Any) -> None:
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    sys.modules[name] = m


def install_stubs(ref: Reference) -> None:
    """What the reference loaders import, with heavy packages replaced by stand-ins they never call here."""
    for n in ("src", "src.data", "src.data.eval_dataset", "src.model", "src.utils", "src.utils.vision_utils",
              "src.constant"):
        _stub(n, __path__=[])
    _stub("datasets", Dataset=_Any, Features=_Any, Value=_Any, Sequence=_Any, load_dataset=None,
          concatenate_datasets=None)
    for n in ("cv2", "imageio"):
        _stub(n)
    _stub("decord", VideoReader=None, cpu=None)
    tokens = {"VLM_IMAGE_TOKENS": {BACKBONE: TOKENS["image"]}, "VLM_VIDEO_TOKENS": {BACKBONE: TOKENS["video"]}}
    proc = ref.names("src/model/processor.py", {"process_input_text"}, GME="-", LamRA="-", LamRA_QWEN2_5="-",
                     E5_V="-", **tokens)
    _stub("src.model.processor", process_input_text=proc["process_input_text"], **tokens)
    vis = ref.names("src/utils/vision_utils/vision_utils.py", {"qa_template", "load_frames", "sample_frames",
                                                              "process_video_frames", "IMAGE_EXTENSIONS",
                                                              "VID_EXTENSIONS"})
    _stub("src.utils.vision_utils.vision_utils", save_frames=lambda **k: None,
          **{k: v for k, v in vis.items() if not k.startswith("__")})
    du = ref.names("src/utils/dataset_utils.py", {"load_qrels_mapping"})
    _stub("src.utils.dataset_utils", load_qrels_mapping=du["load_qrels_mapping"], load_hf_dataset=None,
          sample_dataset=None, load_hf_dataset_multiple_subset=None)
    _stub("src.utils.basic_utils", print_rank=print, print_master=print)
    _stub("src.constant.dataset_hf_path", EVAL_DATASET_HF_PATH={})
    for f in ("base_eval_dataset", "video_classification_utils"):
        ref.module(f"src/data/eval_dataset/{f}.py", f"src.data.eval_dataset.{f}")


def _batch(rows: list[dict]) -> dict[str, list]:
    return {k: [r[k] for r in rows] for k in rows[0]}


def _table(path: Path) -> list[dict]:
    return [r for f in sorted(path.glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def _frames(root: Any, video: str | None) -> list[str] | None:
    if not video:
        return None
    files = list_frame_files(Path(root) / video)
    return [str(files[j]) for j in uniform_indices(len(files), 8, "linspace")]


def _prompt(inst: str, text: str) -> str:
    return (inst + (" " if inst and text else "") + text).strip()


def _norm(t: str) -> str:
    for tok in TOKENS.values():
        t = t.replace(tok, "")
    return t.strip()


def loaders(tree: Path, ref: Reference) -> int:
    install_stubs(ref)
    fr = tree / "video-tasks/frames"
    img = {"image_root": str(tree / "image-tasks")}

    def vid(task: str, name: str) -> dict[str, Any]:
        return {"frame_root": str(fr / task / name), "video_root": "", "clip_root": "",
                "max_video_frames_saved": 64, "max_clip_frames_saved": 8, "num_video_frames": 8,
                "num_clip_frames": 8, "num_negative_clips": 9}

    cases = {  # dataset -> (reference loader file, extra kwargs)
        "ImageNet-1K": ("image_cls_dataset", img), "OK-VQA": ("image_qa_dataset", img),
        "MSCOCO_i2t": ("image_i2t_eval", img), "MSCOCO_t2i": ("image_t2i_eval", img),
        "RefCOCO-Matching": ("image_i2i_vg_dataset", img),
        "UCF101": ("video_classification_datasets", vid("video_cls", "UCF101")),
        "SmthSmthV2": ("ssv2_dataset", vid("video_cls", "SSv2")),
        **{n: (f"{n.lower().replace('-', '')}_dataset", vid("video_ret", n))
           for n in ("MSR-VTT", "MSVD", "DiDeMo", "VATEX", "YouCook2")},
        **{n: (f"{n.lower().replace('-', '')}_dataset", vid("video_qa", n))
           for n in ("NExTQA", "Video-MME", "EgoSchema", "ActivityNetQA", "MVBench")},
        "QVHighlight": ("moment_retrieval_datasets", vid("video_mret", "QVHighlight")),
        "Charades-STA": ("moment_retrieval_datasets", vid("video_mret", "Charades_STA")),
        "MomentSeeker": ("momentseeker_dataset", vid("video_mret", "MomentSeeker")),
    }
    diffs = 0
    for name, (fname, kw) in cases.items():
        spec = registry.get(name)
        folder = next(tree / f for f in spec.folders if (tree / f).is_dir())
        if name == "MVBench":
            rows = [{**r, "subset": c} for c in MVBENCH_CONFIGS if (folder / c).is_dir() for r in _table(folder / c)]
        else:
            rows = _table(folder)
        mod = ref.module(f"src/data/eval_dataset/{fname}.py", f"ref_{fname}")
        out = mod.data_prepare(_batch(rows), model_backbone=BACKBONE, image_resolution=None, num_frames=8,
                               max_frames_saved=64, dataset_name="Kinetics-700" if name == "K700" else name, **kw)
        ev = read_dataset(spec, tree, progress=False)
        assert isinstance(ev, EvalLocal)
        root = kw["frame_root"] + "/" if "frame_root" in kw else "\0"  # reference names of clips are absolute
        for i in range(len(ev)):
            info = out["dataset_infos"][i]
            r_names = [str(n).replace(root, "") for n in info["cand_names"]]
            lab = info["label_name"]
            r_lab = sorted(str(x).replace(root, "") for x in (lab if isinstance(lab, list) else [lab]))
            r_cands = [_norm(c) for c in out["cand_text"][i]]
            r_cframes = [c["paths"] if c else None for c in out["cand_image"][i]]
            if spec.family == "moment_retrieval":  # os.listdir order there, natural order here
                order = sorted(range(len(r_names)), key=lambda j: r_names[j])
                r_names, r_cands, r_cframes = ([x[j] for j in order] for x in (r_names, r_cands, r_cframes))
            q, cands = ev.queries.specs[i], ev.candidates[i].specs
            checks = {
                "query": (_prompt(q.instruction, q.text), _norm(out["query_text"][i][0])),
                "candidates": ([_prompt(c.instruction, c.text) for c in cands], r_cands),
                "names": (ev.names(i), r_names),
                "answer": (sorted(ev.label(i)), r_lab),
            }
            qi = out["query_image"][i][0]
            if q.video:
                checks["query frames"] = (_frames(ev.queries.media.root, q.video), qi["paths"])
            if any(c.video for c in cands):
                checks["candidate frames"] = ([_frames(ev.queries.media.root, c.video) for c in cands], r_cframes)
            if spec.family == "momentseeker":  # the reference takes *all* frames (8 in the published folders)
                for key in ("query frames", "candidate frames"):
                    got = checks.get(key, (None, None))[1]
                    flat = [got] if got and isinstance(got[0], str) else (got or [])
                    if any(f and len(f) > 8 for f in flat):
                        print(f"note {name} row {i} {key}: folders hold > 8 frames; the reference uses them all")
                        checks.pop(key)
            for key, (a, b) in checks.items():
                if a != b:
                    diffs += 1
                    print(f"DIFF {name} row {i} {key}:\n  btoks     {a!r}\n  reference {b!r}")
        print(f"{name:<18} {len(ev)} rows compared")
    print(f"differences: {diffs}")
    return int(diffs > 0)


def scores(tree: Path, run: Path, ref: Reference) -> int:
    _stub("pytrec_eval")
    metrics = ref.names("src/utils/eval_utils/metrics.py", {"RankingMetrics"}, logger=None, Dict=dict)
    rm = metrics["RankingMetrics"](["hit", "ndcg", "precision", "recall", "map", "mrr"])
    worst = 0.0
    for res in sorted(run.glob("*.json")):
        if res.name in ("summary.json", "run.json"):
            continue
        r = json.loads(res.read_text())
        spec = registry.get(r["dataset"])
        ev = read_dataset(spec, tree, progress=False)
        z = np.load(run / "cache" / f"{res.stem}.npz")
        q, preds = z["queries_emb"], []
        if isinstance(ev, EvalLocal) and spec.ranking == "local":
            _, _, names = ev.dedup_candidates()
            emb = dict(zip(names, z["candidates_emb"], strict=True))
            for i in range(len(ev)):
                cn = ev.names(i)
                order = np.argsort(-np.dot(q[i], np.stack([emb[n] for n in cn]).T))
                preds.append({"prediction": [cn[j] for j in order], "label": list(ev.label(i)), "rel_scores": None})
        else:
            g = ev.to_global() if isinstance(ev, EvalLocal) else ev
            order = np.argsort(-np.dot(q, z["corpus_emb"].T), axis=1)
            for i, qid in enumerate(g.query_ids):
                lab = g.qrels[qid]
                preds.append({"prediction": [g.corpus_ids[j] for j in order[i]], "label": list(lab),
                              "rel_scores": list(lab.values()) if spec.modality == "visdoc" else None})
        theirs = rm.evaluate(preds)
        diffs = {k: abs(theirs[k.replace("ndcg", "ndcg_linear")] * 100 - v) for k, v in r["metrics"].items()}
        worst = max(worst, *diffs.values())
        print(f"{r['dataset']:<36} {r['metric']} btoks {r['score']:.4f} reference "
              f"{theirs[r['metric'].replace('ndcg', 'ndcg_linear')] * 100:.4f}; max |diff| over {len(diffs)} "
              f"metrics {max(diffs.values()):.2e}")
    print(f"worst |diff|: {worst:.2e}")
    return int(worst > 1e-6)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    a = sub.add_parser("loaders")
    a.add_argument("tree", type=Path)
    b = sub.add_parser("scores")
    b.add_argument("tree", type=Path)
    b.add_argument("run", type=Path)
    for p in (a, b):
        p.add_argument("--reference", default="/work/.mirror/TIGER-AI-Lab+VLM2Vec/repo",
                       help="VLM2Vec checkout or git mirror")
    args = ap.parse_args()
    ref = Reference(args.reference)
    return loaders(args.tree, ref) if args.what == "loaders" else scores(args.tree, args.run, ref)


if __name__ == "__main__":
    raise SystemExit(main())
