"""The server's wire format: request models, JSON errors, bounded body reading, and image decoding.

Everything here treats the client as hostile: bodies are capped in size and in time, JSON is validated into
pydantic models, and images come only as base64 bytes (a string is never opened as a path), are sniffed against
a short format whitelist, checked for size from the header, and decoded no larger than the model will use.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from typing import Any, Literal

from fastapi import Request
from fastapi.responses import JSONResponse
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from btoks.data.errors import TOO_LARGE, InputError
from btoks.data.media import load_image

_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM")


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


def error_response(
    status: int, message: str, type_: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The OpenAI error shape, so OpenAI clients surface our message."""
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


async def read_json(request: Request, limit: int, timeout_s: float | None = None) -> Any:
    """The JSON body, refusing more than ``limit`` bytes (declared or streamed) and, with ``timeout_s``, a
    body that takes longer than that to arrive (a stalled client would otherwise hold its connection)."""
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
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise ApiError(
                        413, f"request body exceeds the limit of {limit:,} bytes", "request_too_large"
                    )
    except TimeoutError:
        raise ApiError(408, f"request body not received within {timeout_s:g} s", "timeout_error") from None
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


def decode_image(
    s: str, max_pixels: int | None, name: str = "image", decode_pixels: int | None = None
) -> Image.Image:
    """A base64 image (data URL or bare base64) → RGB; 422 for bad data, 413 over the pixel cap.

    Bytes go to PIL as an in-memory buffer only; nothing here can name a file. Images above
    ``decode_pixels`` are shrunk while decoding (:func:`btoks.data.media.load_image`).
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
    if not is_webp and not raw.startswith(_IMAGE_MAGIC):  # cheap early answer; media whitelists formats too
        raise ApiError(422, f"{name}: unsupported image format (PNG, JPEG, GIF, WEBP or BMP)")
    try:
        return load_image(raw, max_pixels=max_pixels, decode_pixels=decode_pixels)
    except InputError as e:
        msg = str(e).replace("<image bytes>", name)
        if e.reason == TOO_LARGE:
            raise ApiError(413, msg, "image_too_large") from None
        raise ApiError(422, msg) from None


__all__ = [
    "ApiError",
    "EmbeddingRequest",
    "SearchRequest",
    "decode_image",
    "error_response",
    "is_image_data_url",
    "read_json",
    "validate",
]
