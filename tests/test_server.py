"""btoks.serve.app: OpenAI compatibility (real client), micro-batching, limits, auth, no file access."""

from __future__ import annotations

import asyncio
import base64
import builtins
import io
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from _serve_helpers import color_image, make_corpus, tiny_model
from PIL import Image

from btoks.encode import encode
from btoks.serve.app import create_app
from btoks.serve.index import build_index

KEY = "test-key-123"
MAX_BODY = 256 * 1024
MAX_PIXELS = 128 * 128


def data_url(img: Image.Image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("server") / "corpus")


@pytest.fixture(scope="module")
def server(model, corpus: Path):
    """uvicorn in a background thread on a free loopback port (socket bound first: no port race)."""
    build_index(model, [corpus], corpus.parent / "idx")
    app = create_app(
        model,
        corpus.parent / "idx",
        api_key=KEY,
        max_body_bytes=MAX_BODY,
        max_image_pixels=MAX_PIXELS,
        max_batch=16,
        max_wait_ms=5,
        model_name="tiny",
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}", app
    srv.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture
def url(server) -> str:
    return server[0]


def auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_openai_client_float_and_base64(model, url: str) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{url}/v1", api_key=KEY)
    texts = ["a photo of a cat", "the quick brown fox jumps over the lazy dog"]
    expected = encode(model, texts)
    default = client.embeddings.create(model="tiny", input=texts)  # the client asks for base64 by default
    explicit_float = client.embeddings.create(model="tiny", input=texts, encoding_format="float")
    for resp in (default, explicit_float):
        assert resp.object == "list" and resp.model == "tiny" and len(resp.data) == 2
        assert [d.index for d in resp.data] == [0, 1] and resp.data[0].object == "embedding"
        np.testing.assert_allclose(np.array([d.embedding for d in resp.data]), expected, atol=1e-5)
        assert resp.usage.prompt_tokens == resp.usage.total_tokens > 0
    raw = client.embeddings.create(model="tiny", input="a photo of a cat", encoding_format="base64")
    vec = np.frombuffer(base64.b64decode(raw.data[0].embedding), dtype="<f4")
    np.testing.assert_allclose(vec, expected[0], atol=1e-5)

    img = color_image(4)
    resp = client.embeddings.create(model="tiny", input=["a cat", data_url(img)], encoding_format="float")
    np.testing.assert_allclose(resp.data[1].embedding, encode(model, img), atol=1e-5)
    resp = client.embeddings.create(
        model="tiny", input="a cat", encoding_format="float", extra_body={"instruction": "Find an image:"}
    )
    np.testing.assert_allclose(resp.data[0].embedding, encode(model, "Find an image: a cat"), atol=1e-5)
    assert [m.id for m in client.models.list()] == ["tiny"]


def test_200_concurrent_requests_are_micro_batched(model, server) -> None:
    url, app = server
    texts = [f"request number {i}: " + "a circle and a square " * (i % 3) for i in range(200)]

    async def run() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with httpx.AsyncClient(base_url=url, headers=auth(), timeout=60, limits=limits) as client:
            return await asyncio.gather(*(client.post("/v1/embeddings", json={"input": t}) for t in texts))

    before = app.state.batcher.batches
    responses = asyncio.run(run())
    assert [r.status_code for r in responses] == [200] * 200
    got = np.array([r.json()["data"][0]["embedding"] for r in responses])
    np.testing.assert_allclose(got, encode(model, texts), atol=1e-5)
    batches = app.state.batcher.batches - before
    assert batches < 100, f"{batches} model batches for 200 requests: no micro-batching"


def test_oversized_body_is_413(url: str) -> None:
    big = {"input": "x" * (MAX_BODY + 10)}
    r = httpx.post(f"{url}/v1/embeddings", json=big, headers=auth())
    assert r.status_code == 413 and r.json()["error"]["type"] == "request_too_large"

    def chunks():  # no Content-Length: the limit applies while reading the stream
        yield b'{"input": "'
        for _ in range(MAX_BODY // 1024 + 2):
            yield b"y" * 1024
        yield b'"}'

    r = httpx.post(
        f"{url}/v1/embeddings", content=chunks(), headers={**auth(), "Content-Type": "application/json"}
    )
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{not json", 400),
        (b"", 400),
        (b"[1, 2]", 422),
        (b'{"inputs": "typo"}', 422),
        (b'{"input": [1, 2, 3]}', 422),
        (b'{"input": ""}', 422),
        (b'{"input": []}', 422),
        (b'{"input": "x", "encoding_format": "int8"}', 422),
        (b'{"input": "x", "dimensions": 3}', 422),
        (b'{"input": "data:image/png;base64,!!!notbase64"}', 422),
        (b'{"input": "data:image/png;base64,' + base64.b64encode(b"%!PS-Adobe-3.0 EPSF") + b'"}', 422),
    ],
)
def test_malformed_requests_get_json_errors(url: str, body: bytes, status: int) -> None:
    r = httpx.post(
        f"{url}/v1/embeddings", content=body, headers={**auth(), "Content-Type": "application/json"}
    )
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"] == "invalid_request_error"


def test_paths_are_text_and_never_opened(model, url: str, monkeypatch) -> None:
    opened: list[str] = []
    real_open, real_image_open = builtins.open, Image.open

    def guard(target) -> None:
        if isinstance(target, str | bytes | Path) and "passwd" in str(target):
            opened.append(str(target))

    def fake_open(file, *args, **kwargs):
        guard(file)
        return real_open(file, *args, **kwargs)

    def fake_image_open(fp, *args, **kwargs):
        guard(fp)
        return real_image_open(fp, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)
    monkeypatch.setattr(Image, "open", fake_image_open)
    attacks = ["../../etc/passwd", "file:///etc/passwd", "/etc/passwd"]
    r = httpx.post(f"{url}/v1/embeddings", json={"input": attacks}, headers=auth())
    assert r.status_code == 200, r.text
    r2 = httpx.post(f"{url}/search", json={"query": "../../etc/passwd", "k": 2}, headers=auth())
    assert r2.status_code == 200
    r3 = httpx.post(f"{url}/search", json={"image": "file:///etc/passwd"}, headers=auth())
    assert r3.status_code == 422  # not base64 image data: refused, not opened
    monkeypatch.undo()
    assert opened == []
    got = np.array([d["embedding"] for d in r.json()["data"]])
    np.testing.assert_allclose(got, encode(model, attacks), atol=1e-5)  # embedded as plain text


def test_api_key(url: str) -> None:
    for headers in ({}, auth("wrong"), {"Authorization": KEY}):
        r = httpx.post(f"{url}/v1/embeddings", json={"input": "x"}, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        assert r.headers["www-authenticate"] == "Bearer"
    assert httpx.post(f"{url}/search", json={"query": "x"}).status_code == 401
    health = httpx.get(f"{url}/health")
    assert health.status_code == 200 and health.json()["status"] == "ok" and health.json()["dim"] == 64
    assert httpx.get(f"{url}/nope", headers=auth()).json()["error"]["type"] == "not_found_error"


def test_image_limits(url: str) -> None:
    big = color_image(1, (200, 200))  # 40,000 px > 16,384 px cap
    r = httpx.post(f"{url}/v1/embeddings", json={"input": [data_url(big)]}, headers=auth())
    assert r.status_code == 413 and "input[0]" in r.json()["error"]["message"]
    broken = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 50).decode()
    r = httpx.post(f"{url}/v1/embeddings", json={"input": ["ok", broken]}, headers=auth())
    assert r.status_code == 422 and "input[1]" in r.json()["error"]["message"]


def test_search_endpoint(url: str, corpus: Path) -> None:
    img = Image.open(corpus / "img0.png").convert("RGB")
    r = httpx.post(f"{url}/search", json={"image": data_url(img), "k": 3}, headers=auth())
    assert r.status_code == 200, r.text
    hits = r.json()["data"]
    assert [h["rank"] for h in hits] == [1, 2, 3] and hits[0]["source"].endswith("img0.png")
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-4) and hits[0]["score"] >= hits[1]["score"]
    r = httpx.post(
        f"{url}/search", json={"query": (corpus / "notes.txt").read_text(), "k": 1}, headers=auth()
    )
    assert r.json()["data"][0]["source"].endswith("notes.txt")
    bare_b64 = data_url(img).split(",", 1)[1]
    r = httpx.post(f"{url}/search", json={"query": "what is this?", "image": bare_b64}, headers=auth())
    assert r.status_code == 200 and len(r.json()["data"]) == 8
    for bad in ({}, {"query": "x", "k": 0}, {"query": "x", "k": 10**6}, {"query": "x", "extra": 1}):
        r = httpx.post(f"{url}/search", json=bad, headers=auth())
        assert r.status_code == 422 and r.json()["error"]["message"]


def test_serve_cli_wiring(monkeypatch, tmp_path: Path) -> None:
    import argparse

    from _serve_helpers import tiny_model_dir

    from btoks.serve import app as app_module
    from btoks.serve import cli

    parser = argparse.ArgumentParser()
    cli.add_serve_args(parser)
    assert all(a.help for a in parser._actions), "every option has a help string"
    calls: list[tuple] = []
    monkeypatch.setattr(app_module, "serve", lambda *a, **kw: calls.append((a, kw)))
    monkeypatch.setenv("BTOKS_API_KEY", "from-env")
    args = parser.parse_args([str(tiny_model_dir()), "--max-body-mb", "2", "--port", "9999"])
    assert cli.run_serve(args) == 0
    (loaded, index), kw = calls[0]
    assert (
        loaded.config.num_btoks == 4
        and index is None
        and kw["host"] == "127.0.0.1"
        and kw["port"] == 9999
        and kw["api_key"] == "from-env"
    )
    assert kw["max_body_bytes"] == 2 * 1024 * 1024 and kw["model_name"] == "model"
