"""HTTP server: an OpenAI-compatible ``/v1/embeddings``, ``/search`` over a built index, and ``/health``.

Security defaults, because an embedding server is often started by someone who just wants a quick demo:

- binds 127.0.0.1 unless told otherwise, and warns when exposed without an API key;
- bodies are capped (``Content-Length`` checked first, then the stream is read with a limit) → 413;
- images come only as base64 data URLs, are sniffed against a short format whitelist (PIL has plugins that
  shell out, e.g. EPS → Ghostscript) and have their pixel count checked from the header before decoding;
- a string is *never* opened as a path: ``"../../etc/passwd"`` or ``"file:///etc/passwd"`` is just text;
- every error is JSON ``{"error": {"message", "type"}}`` (the OpenAI shape), with no tracebacks.

Concurrent requests are micro-batched: handlers put their inputs on an asyncio queue; one worker groups what
is pending (up to ``max_batch`` inputs, waiting at most ``max_wait_ms`` after the first) and runs the model
in a single dedicated thread, so the event loop keeps accepting requests while the model computes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import ipaddress
import json
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from btoks.data.errors import TOO_LARGE, InputError
from btoks.data.media import load_image
from btoks.encode import EncodeOptions, encode, encode_items

if TYPE_CHECKING:
    from btoks.model import BToksModel
    from btoks.serve.index import Index

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096
DEFAULT_MAX_BATCH = 32
DEFAULT_MAX_INPUTS = 256
DEFAULT_MAX_K = 1000
_IMAGE_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
)


class ApiError(Exception):
    """An error answered as ``{"error": {"message", "type"}}`` with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.headers = status, message, type_, headers


def _error_response(
    status: int, message: str, type_: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": type_, "param": None, "code": None}},
        status_code=status,
        headers=headers,
    )


# -------------------------------------------------------------------------------------------- request bodies


class EmbeddingRequest(BaseModel):
    """The OpenAI embeddings request; ``instruction`` is a btoks extension (``extra_body`` in the client)."""

    model_config = ConfigDict(extra="ignore")
    input: str | list[str]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None
    instruction: str | None = None


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str | None = None
    image: str | None = Field(None, description="base64 image or data:image/...;base64,... URL")
    k: int = Field(10, ge=1)
    instruction: str | None = None


async def read_json(request: Request, limit: int) -> Any:
    """The JSON body, refusing more than ``limit`` bytes whether or not the client declared a length."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise ApiError(400, "invalid Content-Length header") from None
        if size > limit:
            raise ApiError(
                413,
                f"request body of {size:,} bytes exceeds the limit of {limit:,} bytes",
                "request_too_large",
            )
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"request body exceeds the limit of {limit:,} bytes", "request_too_large")
    if not body:
        raise ApiError(400, "empty request body; expected a JSON object")
    try:
        return json.loads(bytes(body))
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"malformed JSON body: {e}") from None


def validate(model: type[BaseModel], data: Any) -> Any:
    if not isinstance(data, dict):
        raise ApiError(422, "the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        parts = [f"{'.'.join(map(str, err['loc'])) or 'body'}: {err['msg']}" for err in e.errors()[:5]]
        raise ApiError(422, "invalid request: " + "; ".join(parts)) from None


# ------------------------------------------------------------------------------------------------ images


def is_image_data_url(s: str) -> bool:
    return s[:11].lower() == "data:image/"


def decode_image(s: str, max_pixels: int | None, name: str = "image") -> Image.Image:
    """A base64 image (data URL or bare base64) → RGB; 422 for bad data, 413 over the pixel cap.

    Bytes go to PIL as an in-memory buffer only; nothing here can name a file.
    """
    payload = s
    if s[:5].lower() == "data:":
        header, sep, payload = s.partition(",")
        if not sep or not is_image_data_url(header) or not header.lower().endswith(";base64"):
            raise ApiError(422, f"{name}: image data URLs must look like data:image/<type>;base64,<data>")
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, f"{name}: invalid base64 image data") from None
    is_webp = raw[:4] == b"RIFF" and raw[8:12] == b"WEBP"
    if not is_webp and not any(raw.startswith(magic) for magic, _ in _IMAGE_MAGIC):
        raise ApiError(422, f"{name}: unsupported image format (PNG, JPEG, GIF, WEBP or BMP)")
    try:
        return load_image(raw, max_pixels=max_pixels)
    except InputError as e:
        msg = str(e).replace("<image bytes>", name)
        if e.reason == TOO_LARGE:
            raise ApiError(413, msg, "image_too_large") from None
        raise ApiError(422, msg) from None


# ------------------------------------------------------------------------------------------------ batching


@dataclass
class _Job:
    inputs: list[Any]
    future: asyncio.Future[tuple[np.ndarray, list[int]]]


class MicroBatcher:
    """Groups concurrent requests into model batches; the model runs in one thread (it is not re-entrant)."""

    def __init__(
        self, model: BToksModel, max_batch: int, max_wait_s: float, max_queue: int, options: EncodeOptions
    ) -> None:
        self.model, self.max_batch, self.max_wait_s, self.max_queue = model, max_batch, max_wait_s, max_queue
        self.options = options
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="btoks-model")
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        """Model runs so far (a group of concurrent requests counts once), so tests/metrics see batching."""

    def _ensure_started(self) -> asyncio.Queue[_Job]:
        """Start lazily in the running loop (works under uvicorn and with transports that skip lifespan)."""
        if self._queue is None or self._task is None or self._task.done():
            self._queue = asyncio.Queue(maxsize=self.max_queue)
            self._task = asyncio.get_running_loop().create_task(self._worker())
        return self._queue

    async def submit(self, inputs: list[Any]) -> tuple[np.ndarray, list[int]]:
        """Embeddings (n × d) and token counts for ``inputs``; 422 names the failing input's index."""
        queue = self._ensure_started()
        future: asyncio.Future[tuple[np.ndarray, list[int]]] = asyncio.get_running_loop().create_future()
        try:
            queue.put_nowait(_Job(inputs, future))
        except asyncio.QueueFull:
            raise ApiError(503, "server busy: too many queued requests, retry later", "server_busy") from None
        return await future

    async def _collect(self, queue: asyncio.Queue[_Job]) -> list[_Job]:
        loop = asyncio.get_running_loop()
        jobs = [await queue.get()]
        size = len(jobs[0].inputs)
        deadline = loop.time() + self.max_wait_s
        while size < self.max_batch:
            try:
                job = queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    break
            jobs.append(job)
            size += len(job.inputs)
        return [j for j in jobs if not j.future.done()]  # drop requests whose client went away

    async def _worker(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._collect(self._queue)
            if not jobs:
                continue
            flat = [x for j in jobs for x in j.inputs]
            run = partial(
                encode_items,
                self.model,
                flat,
                batch_size=self.max_batch,
                show_progress_bar=False,
                on_error="skip",
                options=self.options,
            )
            self.batches += 1
            try:
                result = await loop.run_in_executor(self._executor, run)
            except Exception as e:  # a model failure fails this group, not the server
                log.exception("embedding batch failed")
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(
                            ApiError(500, f"embedding failed: {type(e).__name__}", "server_error")
                        )
                continue
            emb = result.embeddings.numpy()
            offset = 0
            for j in jobs:
                n = len(j.inputs)
                errs = sorted((i - offset, e) for i, e in result.errors.items() if offset <= i < offset + n)
                if not j.future.done():
                    if errs:
                        j.future.set_exception(ApiError(422, f"input[{errs[0][0]}]: {errs[0][1].detail}"))
                    else:
                        j.future.set_result((emb[offset : offset + n], result.tokens[offset : offset + n]))
                offset += n

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await self._task
        if self._queue is not None:
            while not self._queue.empty():
                job = self._queue.get_nowait()
                if not job.future.done():
                    job.future.set_exception(ApiError(503, "server shutting down", "server_busy"))
        self._executor.shutdown(wait=False, cancel_futures=True)


# ------------------------------------------------------------------------------------------------ app


def _model_name(model: BToksModel, path: str | None) -> str:
    if path:
        return Path(path).name or str(path)
    return model.config.base_model or "btoks"


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
    max_k: int = DEFAULT_MAX_K,
    max_queue: int = 1024,
    model_name: str | None = None,
) -> FastAPI:
    """Build the FastAPI app; ``model`` may be a loaded model or a ``save_pretrained`` folder.

    ``api_key`` (if set) is required as ``Authorization: Bearer <key>`` on every endpoint except ``/health``.
    """
    from btoks.serve.index import Index

    model_path = None
    if isinstance(model, str | Path):
        from btoks.model import BToksModel

        model_path = str(model)
        model = BToksModel.from_pretrained(model, merge=True)
    name = model_name or _model_name(model, model_path)
    dim = int(encode(model, "warm-up", show_progress_bar=False).shape[0])  # also pays first-call costs now
    index: Index | None = None
    if index_dir is not None:
        index = index_dir if isinstance(index_dir, Index) else Index.load(index_dir)
        index.check_model(model)
    query_instruction = (model.config.extra or {}).get("query_instruction")
    batcher = MicroBatcher(
        model, max_batch, max_wait_ms / 1000, max_queue, EncodeOptions(max_pixels=max_image_pixels)
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await batcher.close()

    app = FastAPI(
        title="btoks", version="1", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.model, app.state.index, app.state.batcher = model, index, batcher

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error_response(exc.status, exc.message, exc.type, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found_error", 405: "invalid_request_error"}.get(
            exc.status_code, "invalid_request_error"
        )
        return _error_response(exc.status_code, str(exc.detail), kind, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _error_response(422, f"invalid request: {exc.errors()[:3]}", "invalid_request_error")

    @app.exception_handler(Exception)
    async def _internal_error(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return _error_response(500, "internal server error", "server_error")

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

    def with_instruction(x: Any, instruction: str | None) -> Any:
        if not instruction:
            return x
        return (
            {"image": x, "instruction": instruction}
            if isinstance(x, Image.Image)
            else {"text": x, "instruction": instruction}
        )

    @app.get("/health")
    async def health() -> dict[str, Any]:
        info = None if index is None else {"count": len(index), "type": index.params.index_type}
        return {"status": "ok", "model": name, "dim": dim, "index": info}

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        authorize(request)
        return {
            "object": "list",
            "data": [{"id": name, "object": "model", "owned_by": "btoks", "created": 0}],
        }

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> JSONResponse:
        authorize(request)
        body = await read_json(request, max_body_bytes)
        raw_input = body.get("input") if isinstance(body, dict) else None
        if isinstance(raw_input, list) and any(isinstance(x, int | list) for x in raw_input):
            raise ApiError(422, "token-id inputs are not supported; send strings (text or image data URLs)")
        req: EmbeddingRequest = validate(EmbeddingRequest, body)
        texts = [req.input] if isinstance(req.input, str) else req.input
        if not texts:
            raise ApiError(422, "input must not be empty")
        if len(texts) > max_inputs:
            raise ApiError(422, f"at most {max_inputs} inputs per request (got {len(texts)})")
        if req.dimensions is not None and req.dimensions != dim:
            raise ApiError(
                422, f"this model produces {dim}-dimensional embeddings; omit 'dimensions' or set it to {dim}"
            )
        for i, s in enumerate(texts):
            if not s.strip():
                raise ApiError(422, f"input[{i}] is empty")

        def parse() -> list[Any]:
            return [
                decode_image(s, max_image_pixels, f"input[{i}]") if is_image_data_url(s) else s
                for i, s in enumerate(texts)
            ]

        items = await asyncio.to_thread(parse)
        vectors, tokens = await batcher.submit([with_instruction(x, req.instruction) for x in items])
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
                "model": name,
                "usage": {"prompt_tokens": used, "total_tokens": used},
            }
        )

    @app.post("/search")
    async def search(request: Request) -> dict[str, Any]:
        authorize(request)
        if index is None:
            raise ApiError(404, "no index is loaded; start the server with --index INDEX", "not_found_error")
        req: SearchRequest = validate(SearchRequest, await read_json(request, max_body_bytes))
        if req.k > max_k:
            raise ApiError(422, f"k must be at most {max_k}")
        query_text = (req.query or "").strip()
        if not query_text and not req.image:
            raise ApiError(422, "give 'query' (text), 'image' (base64), or both")
        item: Any = query_text
        if req.image:
            image = await asyncio.to_thread(decode_image, req.image, max_image_pixels, "image")
            item = {"text": query_text, "image": image}
        instruction = req.instruction or query_instruction
        if instruction:
            item = (
                {"text": item, "instruction": instruction}
                if isinstance(item, str)
                else {**item, "instruction": instruction}
            )
        vectors, _ = await batcher.submit([item])
        scores, ids = await asyncio.to_thread(index.search_vectors, vectors[:1], req.k)
        hits = [h.to_dict() for h in index.hits(scores[0], ids[0])]
        return {"object": "list", "data": hits, "model": name}

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
    **app_kwargs: Any,
) -> None:
    """Run the app with uvicorn (blocking). Loopback only by default; see :func:`create_app` for limits."""
    import uvicorn

    if not is_loopback(host) and not api_key:
        log.warning(
            "serving on %s without an API key: anyone who can reach port %d can use this model "
            "(set --api-key or BTOKS_API_KEY)",
            host,
            port,
        )
    app = create_app(model, index_dir, api_key, **app_kwargs)
    uvicorn.run(app, host=host, port=port, log_level=log_level, server_header=False, date_header=False)


__all__ = ["ApiError", "MicroBatcher", "create_app", "decode_image", "serve"]
