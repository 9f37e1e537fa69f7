"""The authors' rendering of MMEB-train rows (``prompt_style: authors``; docs/parity.md row 9).

Their MMEB-train loader rewrites each side's text before tokenising, per subset: a leading image marker goes
on its own line, the block ends in exactly one newline, lines lose trailing blanks, some negatives are dropped,
and a few subsets have their own rule (WebQA, VisDial, ChartQA). The subset table below is the one their
loader applies by default; btoks' own rendering leaves the row text as published.
"""

from __future__ import annotations

from typing import Any

from btoks.data.sample import IMAGE_TOKEN

_IMAGE_SIDE = {"placement": "own_line", "newline": "single"}
_QUERY_IMAGE_SIDE = ("A-OKVQA", "ChartQA", "CIRR", "DocVQA", "HatefulMemes", "ImageNet_1K", "InfographicsVQA",
                     "MSCOCO", "MSCOCO_i2t", "N24News", "NIGHTS", "OK-VQA", "SUN397", "VOC2007", "Visual7W",
                     "VisualNews_i2t")
_POSITIVE_IMAGE_SIDE = ("CIRR", "MSCOCO", "MSCOCO_t2i", "NIGHTS", "VisualNews_t2i", "WebQA", "VisDial")
_NO_NEGATIVE = ("CIRR", "ImageNet_1K", "MSCOCO", "MSCOCO_i2t", "MSCOCO_t2i", "NIGHTS", "SUN397", "VOC2007",
                "VisualNews_i2t", "VisualNews_t2i", "WebQA")


def _rules(subset: str) -> dict[str, dict[str, str]]:
    rules: dict[str, dict[str, str]] = {}
    if subset in _QUERY_IMAGE_SIDE:
        rules["query"] = dict(_IMAGE_SIDE)
    if subset in _POSITIVE_IMAGE_SIDE:
        rules["positive"] = dict(_IMAGE_SIDE)
    if subset in _NO_NEGATIVE:
        rules["negative"] = {"drop": "yes"}
    if subset == "WebQA":
        rules["query"] = {"markers": "strip_without_media", "newline": "single"}
    if subset == "VisDial":
        rules["query"] = {"separator": "newline", "newline": "single"}
        rules["negative"] = {"markers": "restore_if_empty", "placement": "own_line", "newline": "single"}
    if subset == "ChartQA":
        rules["positive"] = rules["negative"] = {"tail": "strip_horizontal"}
    return rules


def _tidy(text: str, newline: bool = False) -> str:
    """Unix newlines, no trailing blanks on any line, no blanks around the block; with ``newline`` exactly one
    final newline. Blank-only text becomes empty."""
    text = "\n".join(line.rstrip(" \t") for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"))
    text = text.strip(" \t")
    if not text.strip(" \t\n"):
        return ""
    return text.rstrip("\n") + "\n" if newline else text


def render_side(text: str, has_media: bool, rule: dict[str, str]) -> str | None:
    """One side's text under ``rule`` (``None``: the side is dropped). ``text`` uses btoks' ``<image>``."""
    if rule.get("drop"):
        return None
    markers = rule.get("markers")
    if markers == "strip_without_media" and not has_media:
        text = _tidy(text.replace(IMAGE_TOKEN, "").strip("\n"))
    elif markers == "restore_if_empty" and has_media and not text.strip():
        text = IMAGE_TOKEN
    if rule.get("placement") == "own_line" and has_media and text.startswith(IMAGE_TOKEN):
        body = text[len(IMAGE_TOKEN):].lstrip(" \t\n")
        text = _tidy(f"{IMAGE_TOKEN}\n{body}", newline=True) if body else IMAGE_TOKEN
    if rule.get("separator") == "newline":
        text = text.replace("image retrieval: Q:", "image retrieval:\nQ:", 1)
    if rule.get("tail") == "strip_horizontal":
        text = text.rstrip(" \t")
    if rule.get("newline") == "single":
        text = _tidy(text, newline=True)
    return text


def render_mmeb_train(row: dict[str, Any], subset: str) -> dict[str, Any]:
    """A copy of an MMEB-train row with ``qry`` / ``pos_text`` / ``neg_text`` rendered as the authors' loader
    renders them for ``subset`` (markers already in btoks' ``<image>`` form); a dropped negative is emptied."""
    from btoks.data.readers import normalize_markers

    out = dict(row)
    for side, text_key, image_key in (("query", "qry", "qry_image_path"), ("positive", "pos_text", "pos_image_path"),
                                      ("negative", "neg_text", "neg_image_path")):
        rule = _rules(subset).get(side)
        if not rule:
            continue
        has_media = bool(str(row.get(image_key) or "").strip())
        text = render_side(normalize_markers(str(row.get(text_key) or "")), has_media, rule)
        if text is None:
            out[text_key], out[image_key] = "", ""
        else:
            out[text_key] = text
    return out
