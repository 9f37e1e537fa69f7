"""HTTP server: an OpenAI-compatible ``/v1/embeddings``, ``/search`` over a built index, and ``/health``.

Security defaults, because an embedding server is often started by someone who just wants a quick demo
(docs/security.md lists every limit):

- binds 127.0.0.1 unless told otherwise, and warns when exposed without an API key;
- bodies are capped in size (``Content-Length`` checked first, then the stream is read with a limit) → 413,
  and in time (a body that takes longer than ``body_timeout_s`` to arrive) → 408;
- images come only as base64 data URLs, are sniffed against a short format whitelist (PIL has plugins that
  shell out, e.g. EPS → Ghostscript), have their pixel count checked from the header before decoding, and are
  decoded no larger than the model's own image budget;
- memory is bounded: at most ``max_images`` images per request and ``max_images_in_flight`` decoded images in
  the whole server (beyond that requests wait, then get 503), decoding runs in two threads;
- a string is *never* opened as a path: ``"../../etc/passwd"`` or ``"file:///etc/passwd"`` is just text;
- every error is JSON ``{"error": {"message", "type"}}`` (the OpenAI shape), with no tracebacks.

The parts live in :mod:`btoks.serve.protocol` (request models, body reading, image decoding) and
:mod:`btoks.serve.batcher` (image admission, micro-batching); this module wires them into routes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import ipaddress
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from PIL import Image
from starlette.exceptions import HTTPException as StarletteHTTPException

from btoks.encode import EncodeOptions, decode_budget, encode
from btoks.serve.batcher import ImageSlots, MicroBatcher, release_memory
from btoks.serve.protocol import (
    ApiError,
    EmbeddingRequest,
    SearchRequest,
    decode_image,
    error_response,
    is_image_data_url,
    read_json,
    validate,
)

if TYPE_CHECKING:
    from btoks.model import BToksModel
    from btoks.serve.index import Index

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096
DEFAULT_MAX_BATCH = 32
DEFAULT_MAX_INPUTS = 256
DEFAULT_MAX_IMAGES = 32
DEFAULT_MAX_IMAGES_IN_FLIGHT = 64
DEFAULT_BODY_TIMEOUT_S = 30.0
DEFAULT_MAX_K = 1000
DECODE_THREADS = 2
"""Images decoded at once server-wide: each briefly holds its full-size buffer before it is reduced."""


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server (see docs/security.md)."""

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    body_timeout_s: float | None = DEFAULT_BODY_TIMEOUT_S
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS
    max_inputs: int = DEFAULT_MAX_INPUTS
    max_images: int = DEFAULT_MAX_IMAGES
    max_k: int = DEFAULT_MAX_K


@dataclass
class _Server:
    """What the routes share: the model's name and size, the index, the limits and the worker pools."""

    name: str
    dim: int
    index: Index | None
    limits: Limits
    batcher: MicroBatcher
    slots: ImageSlots
    decoder: ThreadPoolExecutor
    decode_pixels: int
    query_instruction: str | None

    async def decode(self, strings: list[str], names: list[str]) -> list[Image.Image]:
        """Decode base64 images in the decode pool (never more than ``DECODE_THREADS`` at once)."""

        def run() -> list[Image.Image]:
            try:
                return [
                    decode_image(s, self.limits.max_image_pixels, n, self.decode_pixels)
                    for s, n in zip(strings, names, strict=True)
                ]
            finally:
                release_memory()

        return await asyncio.get_running_loop().run_in_executor(self.decoder, run)


def _model_name(model: BToksModel, path: str | None) -> str:
    if path:
        return Path(path).name or str(path)
    return model.config.base_model or "btoks"


def _with_instruction(x: Any, instruction: str | None) -> Any:
    """An encode input (text, PIL image or dict) with ``instruction`` prepended."""
    if not instruction:
        return x
    if isinstance(x, dict):
        return {**x, "instruction": instruction}
    key = "image" if isinstance(x, Image.Image) else "text"
    return {key: x, "instruction": instruction}


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.type, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error_response(exc.status_code, str(exc.detail), kind, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, f"invalid request: {exc.errors()[:3]}", "invalid_request_error")

    @app.exception_handler(Exception)
    async def _internal_error(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return error_response(500, "internal server error", "server_error")


def _authorizer(api_key: str | None) -> Callable[[Request], None]:
    """Checks ``Authorization: Bearer <key>`` in constant time (no key: everyone is allowed)."""

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise ApiError(
                401,
                "invalid or missing API key (send Authorization: Bearer <key>)",
                "authentication_error",
                {"WWW-Authenticate": "Bearer"},
            )

    return authorize


def _embedding_inputs(body: Any, srv: _Server) -> tuple[EmbeddingRequest, list[str]]:
    """Validate an embeddings request; the strings to embed (text or image data URLs)."""
    raw_input = body.get("input") if isinstance(body, dict) else None
    if isinstance(raw_input, list) and any(isinstance(x, int | list) for x in raw_input):
        raise ApiError(422, "token-id inputs are not supported; send strings (text or image data URLs)")
    req: EmbeddingRequest = validate(EmbeddingRequest, body)
    texts = [req.input] if isinstance(req.input, str) else req.input
    if not texts:
        raise ApiError(422, "input must not be empty")
    if len(texts) > srv.limits.max_inputs:
        raise ApiError(422, f"at most {srv.limits.max_inputs} inputs per request (got {len(texts)})")
    if req.dimensions is not None and req.dimensions != srv.dim:
        raise ApiError(
            422, f"this model produces {srv.dim}-dimensional embeddings; omit 'dimensions' or set it to {srv.dim}"
        )
    for i, s in enumerate(texts):
        if not s.strip():
            raise ApiError(422, f"input[{i}] is empty")
    n_images = sum(is_image_data_url(s) for s in texts)
    if n_images > srv.limits.max_images:
        raise ApiError(413, f"{n_images} images in one request; at most {srv.limits.max_images} are accepted",
                       "request_too_large")
    return req, texts


def _add_routes(app: FastAPI, srv: _Server, authorize: Callable[[Request], None]) -> None:
    limits = srv.limits

    @app.get("/health")
    async def health() -> dict[str, Any]:
        info = None if srv.index is None else {"count": len(srv.index), "type": srv.index.params.index_type}
        return {"status": "ok", "model": srv.name, "dim": srv.dim, "index": info}

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        authorize(request)
        return {
            "object": "list",
            "data": [{"id": srv.name, "object": "model", "owned_by": "btoks", "created": 0}],
        }

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> JSONResponse:
        authorize(request)
        req, texts = _embedding_inputs(await read_json(request, limits.max_body_bytes, limits.body_timeout_s), srv)
        image_at = [i for i, s in enumerate(texts) if is_image_data_url(s)]
        async with srv.slots.hold(len(image_at)):
            items: list[Any] = list(texts)
            if image_at:
                decoded = await srv.decode([texts[i] for i in image_at], [f"input[{i}]" for i in image_at])
                for i, img in zip(image_at, decoded, strict=True):
                    items[i] = img
            vectors, tokens = await srv.batcher.submit([_with_instruction(x, req.instruction) for x in items])
            del items
        data = []
        for i, vec in enumerate(vectors):
            emb: Any = (
                base64.b64encode(vec.astype("<f4").tobytes()).decode("ascii")
                if req.encoding_format == "base64"
                else vec.tolist()
            )
            data.append({"object": "embedding", "index": i, "embedding": emb})
        used = int(sum(tokens))
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": srv.name,
                "usage": {"prompt_tokens": used, "total_tokens": used},
            }
        )

    @app.post("/search")
    async def search(request: Request) -> dict[str, Any]:
        authorize(request)
        index = srv.index
        if index is None:
            raise ApiError(404, "no index is loaded; start the server with --index INDEX", "not_found_error")
        req: SearchRequest = validate(
            SearchRequest, await read_json(request, limits.max_body_bytes, limits.body_timeout_s)
        )
        if req.k > limits.max_k:
            raise ApiError(422, f"k must be at most {limits.max_k}")
        query_text = (req.query or "").strip()
        if not query_text and not req.image:
            raise ApiError(422, "give 'query' (text), 'image' (base64), or both")
        async with srv.slots.hold(1 if req.image else 0):
            item: Any = query_text
            if req.image:
                (image,) = await srv.decode([req.image], ["image"])
                item = {"text": query_text, "image": image}
            vectors, _ = await srv.batcher.submit([_with_instruction(item, req.instruction or srv.query_instruction)])
        scores, ids = await asyncio.to_thread(index.search_vectors, vectors[:1], req.k)
        hits = [h.to_dict() for h in index.hits(scores[0], ids[0])]
        return {"object": "list", "data": hits, "model": srv.name}


def create_app(
    model: BToksModel | str | Path,
    index_dir: str | Path | Index | None = None,
    api_key: str | None = None,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_wait_ms: float = 5.0,
    max_inputs: int = DEFAULT_MAX_INPUTS,
    max_images: int = DEFAULT_MAX_IMAGES,
    max_images_in_flight: int = DEFAULT_MAX_IMAGES_IN_FLIGHT,
    body_timeout_s: float | None = DEFAULT_BODY_TIMEOUT_S,
    max_k: int = DEFAULT_MAX_K,
    max_queue: int = 1024,
    model_name: str | None = None,
) -> FastAPI:
    """Build the FastAPI app; ``model`` may be a loaded model or a ``save_pretrained`` folder.

    ``api_key`` (if set) is required as ``Authorization: Bearer <key>`` on every endpoint except ``/health``.
    """
    from btoks.loading import load
    from btoks.serve.index import Index

    model_path = str(model) if isinstance(model, str | Path) else None
    if model_path is not None:
        model = load(model_path, merge=True)
    assert not isinstance(model, str | Path)
    dim = int(encode(model, "warm-up", show_progress_bar=False).shape[0])  # also pays first-call costs now
    index: Index | None = None
    if index_dir is not None:
        index = index_dir if isinstance(index_dir, Index) else Index.load(index_dir)
        index.check_model(model)
    decode_pixels = decode_budget(model)
    options = EncodeOptions(max_pixels=max_image_pixels, decode_pixels=decode_pixels)
    srv = _Server(
        name=model_name or _model_name(model, model_path),
        dim=dim,
        index=index,
        limits=Limits(max_body_bytes, body_timeout_s, max_image_pixels, max_inputs, max_images, max_k),
        batcher=MicroBatcher(model, max_batch, max_wait_ms / 1000, max_queue, options),
        slots=ImageSlots(max(max_images_in_flight, max_images)),
        decoder=ThreadPoolExecutor(max_workers=DECODE_THREADS, thread_name_prefix="btoks-decode"),
        decode_pixels=decode_pixels,
        query_instruction=(model.config.extra or {}).get("query_instruction"),
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await srv.batcher.close()
        srv.decoder.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="btoks", version="1", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.model, app.state.index, app.state.batcher, app.state.server = model, index, srv.batcher, srv
    _install_error_handlers(app)
    _add_routes(app, srv, _authorizer(api_key))
    return app


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    model: BToksModel | str | Path,
    index_dir: str | Path | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    log_level: str = "info",
    forwarded_allow_ips: str | None = None,
    **app_kwargs: Any,
) -> None:
    """Run the app with uvicorn (blocking). Loopback only by default; see :func:`create_app` for limits.

    ``forwarded_allow_ips``: proxies whose ``X-Forwarded-*`` headers are trusted (default: none but loopback).
    """
    import uvicorn

    if not is_loopback(host) and not api_key:
        log.warning(
            "serving on %s without an API key: anyone who can reach port %d can use this model "
            "(set --api-key or BTOKS_API_KEY)",
            host,
            port,
        )
    app = create_app(model, index_dir, api_key, **app_kwargs)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level,
        server_header=False,
        date_header=False,
        timeout_keep_alive=5,
        forwarded_allow_ips=forwarded_allow_ips,
    )


__all__ = ["ApiError", "Limits", "MicroBatcher", "create_app", "decode_image", "serve"]
