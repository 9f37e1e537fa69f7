"""Hostile inputs as a suite: what a careful attacker or a user re-running commands would try (issue 14).

Bad media through every entry point, symlinks and path escapes, oversized and malformed requests, slow
clients, and a bounded concurrent load test against a real ``btoks serve`` process on 127.0.0.1.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import pytest
from PIL import EpsImagePlugin, Image

from btoks.data.media import InputError, load_image, load_video, reduce_factor
from btoks.data.sample import Sample

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"


def _png_bytes(size: tuple[int, int], color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------- decoding


def test_big_images_are_decoded_within_the_pixel_budget(tmp_path: Path) -> None:
    """A 2048² PNG with a 256²-pixel budget is box-reduced at decode; a JPEG uses draft mode (DCT scaling)."""
    (tmp_path / "big.png").write_bytes(_png_bytes((2048, 2048)))
    Image.new("RGB", (2048, 1536), (10, 200, 30)).save(tmp_path / "big.jpg", quality=90)
    img = load_image("big.png", tmp_path, decode_pixels=256 * 256)
    assert img.size == (256, 256) and img.mode == "RGB" and img.getpixel((5, 5)) == (200, 30, 30)
    jpg = load_image("big.jpg", tmp_path, decode_pixels=256 * 256)
    assert jpg.size[0] * jpg.size[1] >= 256 * 256 and jpg.size[0] <= 512  # never below the budget
    assert load_image("big.png", tmp_path).size == (2048, 2048)  # no budget: full size
    assert reduce_factor((4096, 4096), 28 * 28 * 1280) == 4  # 1024² still covers Qwen-VL's 1 MP budget
    assert reduce_factor((4000, 300), 1000) == 1  # the short side stays >= MIN_DECODE_EDGE
    assert reduce_factor((100, 100), None) == 1


def test_video_frames_are_decoded_within_the_budget(tmp_path: Path) -> None:
    from _serve_helpers import write_video

    clip = write_video(tmp_path / "clip.mp4", frames=4, size=(640, 512))
    frames = load_video(clip, num_frames=2, decode_pixels=256 * 256)
    assert [f.size for f in frames] == [(320, 256)] * 2


def test_local_paths_only_reach_whitelisted_pil_plugins(tmp_path: Path, monkeypatch) -> None:
    """An EPS file named .png must not reach the EPS plugin (which shells out to Ghostscript)."""
    tried = []
    monkeypatch.setattr(EpsImagePlugin, "_accept", lambda prefix: tried.append(prefix) or False)
    (tmp_path / "evil.png").write_bytes(EPS)
    with pytest.raises(InputError, match=r"evil.png: cannot decode image \(not a readable PNG, JPEG"):
        load_image("evil.png", tmp_path)
    with pytest.raises(InputError, match="cannot decode image"):
        load_image(EPS)
    assert not tried


def test_decoding_does_not_re_arm_warnings(tmp_path: Path) -> None:
    """``warnings.catch_warnings()`` around every decode reset the once-per-location registry, so a library
    FutureWarning printed at every training step; now it prints once."""
    (tmp_path / "a.png").write_bytes(_png_bytes((8, 8)))

    def library_call() -> None:
        warnings.warn("deprecated thing", FutureWarning, stacklevel=1)

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")
        for _ in range(3):
            library_call()
            load_image("a.png", tmp_path)
    assert len([w for w in seen if "deprecated thing" in str(w.message)]) == 1


def test_sample_with_a_path_instead_of_an_image_is_an_input_error() -> None:
    with pytest.raises(ValueError, match=r"Sample.images\[0\] must be a decoded PIL image, got str 'path.png'"):
        Sample(images=["path.png"])
    with pytest.raises(ValueError, match=r"Sample.video\[1\]"):
        Sample(video=[Image.new("RGB", (4, 4)), b"x"])


# ---------------------------------------------------------------------------------------------- index


def test_index_never_follows_a_symlink_out_of_the_folder(tmp_path: Path) -> None:
    from btoks.serve.index import discover

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwd.txt").write_text("root:x:0:0:root:/root:/bin/bash")
    (outside / "dir").mkdir()
    (outside / "dir" / "secret.md").write_text("secret")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "ok.txt").write_text("fine")
    (docs / "alias.txt").symlink_to(docs / "ok.txt")  # inside: allowed (deduplicated)
    (docs / "leak.txt").symlink_to(outside / "passwd.txt")
    (docs / "linkdir").symlink_to(outside / "dir")
    assert discover([docs]) == [(docs / "ok.txt").resolve()]


def test_chunk_overlap_must_be_smaller_than_the_chunk() -> None:
    from btoks.serve.index import check_chunking

    check_chunking(100, 99)
    check_chunking(None, 0)
    for overlap in (100, 500, -1):
        with pytest.raises(ValueError, match="chunk overlap must be"):
            check_chunking(100, overlap)


# ---------------------------------------------------------------------------------------------- bad media


def _bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming ``width × height`` pixels (a few dozen bytes: a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def bad_images() -> dict[str, bytes]:
    """Every kind of bad image file (named .png wherever it lands) → what it is."""
    good = _png_bytes((64, 64))
    return {
        "truncated": good[: len(good) // 2],
        "garbage": b"not an image at all",
        "empty": b"",
        "eps": EPS,
        "bomb": _bomb_png(100_000, 100_000),
        "pdf_as_png": b"%PDF-1.4\n%broken\n",
    }


def _bad_folder(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, data in bad_images().items():
        (root / f"{name}.png").write_bytes(data)
    (root / "broken.pdf").write_bytes(b"%PDF-1.4 not really")
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 garbage")
    (root / "good.png").write_bytes(_png_bytes((64, 64), (0, 0, 255)))
    return root


def test_bad_media_through_encode(tmp_path: Path) -> None:
    from _serve_helpers import tiny_model

    from btoks.encode import encode_items

    folder = _bad_folder(tmp_path / "media")
    paths = sorted(folder.iterdir())
    result = encode_items(tiny_model(), paths, on_error="skip", show_progress_bar=False)
    failed = {paths[i].name: e for i, e in result.errors.items()}
    assert sorted(failed) == sorted(p.name for p in paths if p.name != "good.png")
    for name, err in failed.items():
        assert name in str(err), err  # every message names its file
    assert failed["bomb.png"].reason == "too_large"
    assert result.tokens[paths.index(folder / "good.png")] > 0


def test_bad_media_through_index(tmp_path: Path) -> None:
    from _serve_helpers import tiny_model

    from btoks.serve.index import build_index

    folder = _bad_folder(tmp_path / "media")
    (folder / "leak.txt").symlink_to(tmp_path / "outside.txt")
    (tmp_path / "outside.txt").write_text("root:x:0:0")
    report = build_index(tiny_model(), [folder], tmp_path / "idx", show_progress_bar=False)
    assert report.count == 1  # good.png only: leak.txt is never read
    skipped = {Path(s["source"]).name for s in report.skipped}
    assert skipped == {p.name for p in folder.iterdir()} - {"good.png", "leak.txt"}


def _eval_table(root: Path) -> Path:
    """An image eval set: 2 good rows and one row per bad image kind / path escape."""
    import json

    _bad_folder(root / "images")
    (root / "images" / "good2.png").write_bytes(_png_bytes((64, 64), (0, 255, 0)))
    (root.parent / "secret.png").write_bytes(_png_bytes((8, 8)))
    (root / "images" / "link.png").symlink_to(root.parent / "secret.png")
    paths = ["images/good.png", "images/good2.png", *(f"images/{k}.png" for k in bad_images()),
             "images/missing.png", "../secret.png", str(root.parent / "secret.png"), "images/link.png"]
    rows = [{"qry_inst": "<|image_1|> Represent the given image", "qry_text": "", "qry_img_path": p,
             "tgt_inst": "", "tgt_text": ["a", "b"], "tgt_img_path": ["", ""]} for p in paths]
    (root / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_bad_media_through_eval(tmp_path: Path) -> None:
    import json

    from _serve_helpers import tiny_model_dir

    from btoks.data.readers import InputError
    from btoks.eval import registry, runner

    data = _eval_table(tmp_path / "data" / "hostile")
    (tmp_path / "data" / "manifest.json").write_text(
        '{"datasets": [{"name": "hostile-img", "modality": "image", "meta_task": "classification", '
        '"metric": "hit@1", "path": "hostile"}]}')
    try:
        summary = runner.evaluate(tiny_model_dir(), data.parent, out_dir=tmp_path / "run", on_error="skip",
                                  progress=False, log=None)
        assert summary["skipped_total"] == 10, summary
        result = json.loads((tmp_path / "run" / "hostile-img.json").read_text())
        assert result["n_queries"] == 2
        assert result["skipped"] == {"corrupt_image": 5, "missing_file": 1, "path_escape": 3, "too_large": 1}
        with pytest.raises(InputError, match=r"hostile-img: row \d+: .*(truncated|garbage|empty|eps|bomb)"):
            runner.evaluate(tiny_model_dir(), data.parent, out_dir=tmp_path / "run2", progress=False, log=None)
    finally:
        registry.unregister("hostile-img")


def test_bad_media_through_train_readers(tmp_path: Path) -> None:
    """Training reads the same tables: each bad file is an error naming row and file (header-level problems
    at read time, undecodable pixels when the pair is loaded), never a crash deep in a training step."""
    import json

    from btoks.data.readers import read_train

    _bad_folder(tmp_path / "images")
    (tmp_path / "secret.png").write_bytes(_png_bytes((8, 8)))
    names = [*(f"{k}.png" for k in bad_images()), "missing.png", "../secret.png", str(tmp_path / "secret.png")]
    for i, name in enumerate(names):
        table = tmp_path / f"t{i}.jsonl"
        table.write_text(json.dumps({"qry": "<|image_1|> what is it?", "qry_image_path": name,
                                     "pos_text": "a shape"}) + "\n")
        with pytest.raises(ValueError, match=rf"row 0: .*{Path(name).name}"):
            pairs = read_train(table, root=tmp_path / "images")
            pairs[0]


# ---------------------------------------------------------------------------------------------- server


def _data_url(raw: bytes, kind: str = "png") -> str:
    import base64

    return f"data:image/{kind};base64," + base64.b64encode(raw).decode()


def _rss_mib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    """A real ``btoks serve`` process on 127.0.0.1 (tiny model, small limits); yields (url, process)."""
    import os
    import socket
    import subprocess
    import sys
    import time

    import httpx

    from btoks import BToksConfig, BToksModel
    from btoks.backbones.tiny import tiny_backbone

    if not Path("/proc/self/status").is_file():
        pytest.skip("RSS is read from /proc (Linux)")
    model = tmp_path_factory.mktemp("hostile-serve") / "model"
    tiny = BToksModel(tiny_backbone("qwen2_vl"), BToksConfig(num_btoks=4))
    tiny.backbone.set_pixel_budget(max_pixels=224 * 224)  # 64 tokens an image: fits its max_length
    tiny.save_pretrained(model)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "btoks.cli", "serve", str(model), "--port", str(port), "--log-level", "warning",
         "--max-body-mb", "4", "--max-images", "4", "--max-images-in-flight", "8", "--body-timeout", "3"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"btoks serve did not start: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.2)
    yield url, proc
    proc.terminate()
    proc.wait(30)


def test_server_refuses_bad_images_and_oversized_requests(served) -> None:
    import httpx

    url, _ = served
    expected = {"bomb": 413}
    for name, raw in bad_images().items():
        r = httpx.post(f"{url}/v1/embeddings", json={"input": ["ok", _data_url(raw)]}, timeout=60)
        assert r.status_code == expected.get(name, 422), (name, r.text)
        assert "input[1]" in r.json()["error"]["message"] or name == "empty"
    small = _data_url(_png_bytes((32, 32)))
    r = httpx.post(f"{url}/v1/embeddings", json={"input": [small] * 5}, timeout=60)  # --max-images 4
    assert r.status_code == 413 and "at most 4" in r.json()["error"]["message"]
    r = httpx.post(f"{url}/v1/embeddings", content=b"{" + b" " * (5 << 20), timeout=60)  # --max-body-mb 4
    assert r.status_code == 413
    r = httpx.post(f"{url}/v1/embeddings", content=b'{"input": ["a", ', timeout=60)
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("malformed JSON")


def test_image_slots_bound_the_images_held_server_wide() -> None:
    import asyncio

    from btoks.serve.batcher import ImageSlots
    from btoks.serve.protocol import ApiError

    async def run() -> list[int]:
        slots, codes = ImageSlots(capacity=3, wait_s=0.05), []
        async with slots.hold(2):
            for n in (2, 4):  # 2 more do not fit while 2 are held: wait, then 503; 4 never fit: 413
                try:
                    async with slots.hold(n):
                        codes.append(200)
                except ApiError as e:
                    codes.append(e.status)
            async with slots.hold(1):
                codes.append(slots.used)
        slots.wait_s = 60.0  # no timing in what follows: the waiter is released by the holder, not a clock
        waiter = asyncio.create_task(_hold(slots, 3))  # needs every slot: waits until the holder below is done
        async with slots.hold(1):
            await asyncio.sleep(0.01)
            codes.append(int(waiter.done()))
        await waiter
        return [*codes, slots.used]

    assert asyncio.run(run()) == [503, 413, 3, 0, 0]


async def _hold(slots, n: int) -> None:
    async with slots.hold(n):
        pass


def test_slow_client_gets_408_and_does_not_block_others(served) -> None:
    import socket

    import httpx

    url, _ = served
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as slow:
        slow.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"input\": ")  # ... and then nothing more
        assert httpx.post(f"{url}/v1/embeddings", json={"input": "meanwhile"}, timeout=60).status_code == 200
        answer = b""
        while not answer.endswith(b"}"):  # headers and body may arrive in separate segments
            chunk = slow.recv(4096)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"not received within 3 s" in answer


def test_concurrent_load_on_a_real_server_has_no_failures_and_bounded_memory(served) -> None:
    """96 concurrent requests (text, small images, 4 × 2048² PNGs) against ``btoks serve``: every one
    succeeds, and the server's RSS grows by less than 300 MiB (images decoded within the model's budget,
    at most 8 in flight, memory handed back after each batch)."""
    import asyncio

    import httpx

    url, proc = served
    big = _data_url(_png_bytes((2048, 2048)))
    small = [_data_url(_png_bytes((48, 48), (i * 20, 0, 0))) for i in range(8)]
    bodies = [{"input": f"text request {i}"} for i in range(48)]
    bodies += [{"input": [small[i % 8], f"caption {i}"]} for i in range(40)]
    bodies += [{"input": [big] * 4} for _ in range(8)]
    httpx.post(f"{url}/v1/embeddings", json=bodies[-1], timeout=120).raise_for_status()  # warm-up
    before = _rss_mib(proc.pid)

    async def run() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
            return await asyncio.gather(*(client.post("/v1/embeddings", json=b) for b in bodies))

    responses = asyncio.run(run())
    failed = [(r.status_code, r.text[:200]) for r in responses if r.status_code != 200]
    assert not failed, failed
    growth = _rss_mib(proc.pid) - before
    assert growth < 300, f"RSS grew by {growth} MiB under load"


# ---------------------------------------------------------------------------------------------- re-running


def test_quickstart_rerun_keeps_the_first_runs_timings(tmp_path: Path, monkeypatch) -> None:
    """Stages are faked (their outputs written instantly); a re-run reuses them and must not overwrite the
    first run's stage timings with the near-zero time of finding them."""
    import json
    import time

    from btoks import quickstart
    from btoks.cli import main

    def fake_data(out: Path, size: str, seed: int) -> Path:
        (out / "data").mkdir(exist_ok=True)
        if not (out / "data" / "manifest.json").is_file():
            time.sleep(0.05)
            manifest = {"size": size, "seed": seed, "version": quickstart.VERSION}  # what a real build records
            (out / "data" / "manifest.json").write_text(json.dumps(manifest))
        return out / "data"

    def fake_train(preset, arm, out, data, extra) -> Path:
        model = out / arm.name / "model"
        if not (model / "btoks_config.json").is_file():
            time.sleep(0.05)
            model.mkdir(parents=True)
            (model / "btoks_config.json").write_text("{}")
        return model

    def fake_eval(model, data, out_dir, batch_size) -> None:
        out_dir.mkdir(exist_ok=True)
        if not (out_dir / "summary.json").is_file():
            time.sleep(0.05)
            (out_dir / "summary.json").write_text("{}")

    def fake_compare(a, b, out, labels, progress):
        out.mkdir(exist_ok=True)
        (out / "compare.md").write_text("table")
        return {"overall": None, "meta_tasks": {}, "modalities": {}}

    monkeypatch.setattr(quickstart, "build_data", fake_data)
    monkeypatch.setattr(quickstart, "train_arm", fake_train)
    monkeypatch.setattr(quickstart, "evaluate", fake_eval)
    monkeypatch.setattr(quickstart, "compare", fake_compare)
    monkeypatch.setattr(quickstart, "first_losses", lambda run: (1.0, 0.5))
    argv = ["quickstart", "--out", str(tmp_path), "--no-search", "--jobs", "1"]  # fakes live in this process
    assert main(argv) == 0
    first = json.loads((tmp_path / "quickstart.json").read_text())["wall_times_s"]
    assert all(v >= 0.05 for k, v in first.items() if k != "total_s")
    assert main(argv) == 0
    assert json.loads((tmp_path / "quickstart.json").read_text())["wall_times_s"] == first


# ---------------------------------------------------------------------------------------------- CLI errors


def _cli(capsys, *argv: str) -> tuple[int, str]:
    """Exit code and the error line(s) of ``btoks ARGV`` (progress bars of model loading filtered out)."""
    from btoks.cli import main

    code = main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, "\n".join(line for line in err.splitlines() if line.startswith("btoks "))


def test_index_errors_are_one_line_messages(tmp_path: Path, capsys) -> None:
    import fcntl

    import torch
    from _serve_helpers import tiny_model, tiny_model_dir

    from btoks.serve.index import build_index

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("a circle")
    code, err = _cli(capsys, "search", str(tmp_path / "docs"), "query")
    assert code == 2 and err.startswith("btoks search: error: ") and "not a btoks index" in err
    assert "\n" not in err and "Traceback" not in err

    build_index(tiny_model(), [tmp_path / "docs"], tmp_path / "idx", show_progress_bar=False)
    other = tiny_model()  # the same architecture with other weights: embeddings are not comparable
    state = {k: v.clone() for k, v in other.state_dict().items()}
    try:
        with torch.no_grad():
            for p in other.parameters():
                p.add_(torch.randn_like(p) * 0.5, alpha=1.0)
        other.save_pretrained(tmp_path / "other")
    finally:
        other.load_state_dict(state)
    code, err = _cli(capsys, "search", str(tmp_path / "idx"), "query", "--model", str(tmp_path / "other"))
    assert code == 2 and "does not match the one the index was built with" in err and "\n" not in err

    with (tmp_path / "idx" / ".lock").open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another writer holds the index
        code, err = _cli(capsys, "index", str(tiny_model_dir()), str(tmp_path / "docs"), "--out",
                         str(tmp_path / "idx"), "--no-progress")
    assert code == 2 and "another process is writing this index" in err and "\n" not in err

    code, err = _cli(capsys, "index", str(tmp_path / "nope"), str(tmp_path / "docs"), "--out", str(tmp_path / "i2"),
                     "--chunk-chars", "50", "--chunk-overlap", "50")
    assert code == 2 and "chunk overlap must be" in err  # refused before any model is loaded
    code, err = _cli(capsys, "serve", str(tmp_path / "docs"))
    assert code == 2 and "not a btoks model folder" in err


def test_config_and_compare_errors_are_one_line_messages(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: tiny:llama\n  lr: [1\n")
    (tmp_path / "data" / "ImageNet-1K").mkdir(parents=True)
    for argv, message in (
        (("train", str(bad)), "invalid YAML"),
        (("train", "configs/tiny.yaml", "lr=-1", "--dry-run"), "lr must be > 0"),
        (("train", "configs/tiny.yaml", "lora=maybe", "--dry-run"), "lora must be true or false"),
        (("eval", str(tmp_path), "--data", str(tmp_path), "--out", str(tmp_path / "r")), "no manifest.json"),
        (("eval", str(tmp_path), "--data", str(tmp_path / "data"), "--out", str(tmp_path / "r")),
         "not a saved btoks model"),
    ):
        code, err = _cli(capsys, *argv)
        assert code == 2 and message in err and "\n" not in err, (argv, err)


def test_compare_with_no_common_dataset_is_an_error(tmp_path: Path, capsys) -> None:
    from btoks.eval import registry
    from btoks.eval.report import DatasetResult, save_result

    for run, name in (("a", "ImageNet-1K"), ("b", "N24News")):
        spec = registry.get(name)
        save_result(tmp_path / run, DatasetResult(dataset=spec.name, modality=spec.modality,
                                                  meta_task=spec.meta_task, metric=spec.metric, score=50.0,
                                                  n_queries=2, per_query=[0.0, 1.0]))
    code, err = _cli(capsys, "compare", str(tmp_path / "a"), str(tmp_path / "b"))
    assert code == 2 and "no dataset in common" in err and "ImageNet-1K" in err
