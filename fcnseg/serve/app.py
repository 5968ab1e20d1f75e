"""The HTTP side of ``fcnseg serve``: ``create_app(model, meta, settings=...) -> Starlette`` (an ASGI app).

Routes: ``GET /`` (the page in ``static/``), ``POST /v1/segment``, ``GET /v1/model``, ``GET /healthz``.

Load and limits. Every ``/v1/segment`` request counts from its arrival to its answer (reading the upload,
decoding, waiting for the model, inference, encoding); a request arriving when ``max_queue`` are counted is
answered 503 at once, with ``Retry-After``. Inference runs on one dedicated thread (the model sees one image at
a time and uses torch's intra-op threads); decoding and encoding run on Starlette's thread pool, so the event
loop only moves bytes and ``/healthz`` answers while the model works. Errors are JSON ``{"error": "..."}``.
"""

from __future__ import annotations

import asyncio
import base64
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from torch import nn

from fcnseg.checkpoint import ModelMeta
from fcnseg.predict import predict_labels
from fcnseg.serve.segment import BadImage, decode_image, encode_result, format_bytes

STATIC_DIR = Path(__file__).parent / "static"
IMAGE_FIELD = "image"  # the multipart field that carries the upload
MULTIPART_ALLOWANCE = 16 * 1024  # bytes of multipart envelope (boundaries, part headers) allowed on top of the file
# The page loads only its own script, style and the images it makes (blob: for the chosen file, data: for results).
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
                               "script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}


@dataclass(frozen=True)
class ServeSettings:
    """Limits and defaults of the server; the CLI flags of ``fcnseg serve`` set them."""

    max_upload_bytes: int = 10_000_000  # --max-upload-mb 10
    max_pixels: int = 12_000_000  # --max-pixels: a 4000x3000 photo
    max_queue: int = 32  # --max-queue: /v1/segment requests in progress or waiting; one more gets 503
    default_alpha: float = 0.5  # overlay opacity when the request gives no ?alpha=

    def __post_init__(self):
        for name in ("max_upload_bytes", "max_pixels", "max_queue"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.default_alpha <= 1.0:
            raise ValueError(f"default_alpha must be in [0, 1], got {self.default_alpha}")


@dataclass
class ServeState:
    """What the handlers share: the model, its metadata, the limits, and the load counters."""

    model: nn.Module
    meta: ModelMeta
    settings: ServeSettings
    device: torch.device
    executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="fcnseg-inference")
    )
    in_progress: int = 0  # /v1/segment requests counted against max_queue
    last_inference_s: float = 0.0  # for Retry-After


class ApiError(Exception):
    """A request the server refuses; answered as JSON ``{"error": message}`` with ``status``."""

    def __init__(self, message: str, *, status: int, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


# ---------------------------------------------------------------- reading the request


def too_large(num_bytes: int, limit: int, *, at_least: bool = False) -> ApiError:
    size = ("over " if at_least else "") + format_bytes(num_bytes)
    return ApiError(f"upload is {size}, over the {format_bytes(limit)} limit (--max-upload-mb)", status=413)


def parse_query(request: Request, settings: ServeSettings) -> tuple[str, float]:
    """``?format=json|png`` and ``?alpha=`` (overlay opacity in [0, 1]); 400 when either is malformed."""
    output = request.query_params.get("format", "json")
    if output not in ("json", "png"):
        raise ApiError(f"format must be 'json' or 'png', got {output!r}", status=400)
    text = request.query_params.get("alpha")
    if text is None:
        return output, settings.default_alpha
    try:
        alpha = float(text)
    except ValueError:
        alpha = math.nan
    if not 0.0 <= alpha <= 1.0:  # also false for NaN
        raise ApiError(f"alpha must be a number from 0 to 1, got {text!r}", status=400)
    return output, alpha


async def read_upload(request: Request, *, max_bytes: int) -> bytes:
    """The bytes of the multipart field ``image``, refused with 413 as soon as the body passes the limit."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise ApiError(
            f"send the image as multipart/form-data in a field named {IMAGE_FIELD!r} "
            f"(e.g. curl -F {IMAGE_FIELD}=@photo.jpg), not {content_type or 'no content type'}",
            status=415,
        )
    body_limit = max_bytes + MULTIPART_ALLOWANCE
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(f"invalid Content-Length {declared!r}", status=400)
        if int(declared) > body_limit:
            raise too_large(int(declared), max_bytes)
    received = 0

    async def receive_within_limit():  # counts streamed (e.g. chunked) bodies that declare no length
        nonlocal received
        message = await request.receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > body_limit:
                raise too_large(max_bytes, max_bytes, at_least=True)
        return message

    form = await Request(request.scope, receive_within_limit).form(max_files=1, max_fields=16)
    try:
        upload = form.get(IMAGE_FIELD)
        if upload is None:
            raise ApiError(f"no field named {IMAGE_FIELD!r} in the form (e.g. curl -F {IMAGE_FIELD}=@photo.jpg)",
                           status=400)
        if not isinstance(upload, UploadFile):
            raise ApiError(f"the form field {IMAGE_FIELD!r} must be a file, not text", status=400)
        data = await upload.read()
    finally:
        await form.close()
    if len(data) > max_bytes:
        raise too_large(len(data), max_bytes)
    return data


# ---------------------------------------------------------------- handlers


async def run_inference(state: ServeState, image: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """Labels ``(H, W)`` from the inference thread, with seconds spent waiting for it and running."""
    queued = time.perf_counter()

    def job():
        started = time.perf_counter()
        labels = predict_labels(state.model, image, normalization=state.meta.normalization, device=state.device)
        return labels, started - queued, time.perf_counter() - started

    labels, wait_s, inference_s = await asyncio.get_running_loop().run_in_executor(state.executor, job)
    state.last_inference_s = inference_s
    return labels, wait_s, inference_s


def busy_error(state: ServeState) -> ApiError:
    retry_after = max(1, math.ceil(state.in_progress * state.last_inference_s))
    return ApiError(
        f"the server is busy: {state.in_progress} requests in progress, the most it queues (--max-queue "
        f"{state.settings.max_queue}); retry in {retry_after} s",
        status=503, headers={"Retry-After": str(retry_after)},
    )


async def segment(request: Request) -> Response:
    """``POST /v1/segment``: multipart ``image`` -> JSON (classes, shares, timing, PNGs) or the overlay PNG."""
    state: ServeState = request.app.state.serve
    start = time.perf_counter()
    output, alpha = parse_query(request, state.settings)
    if state.in_progress >= state.settings.max_queue:
        raise busy_error(state)
    state.in_progress += 1
    try:
        data = await read_upload(request, max_bytes=state.settings.max_upload_bytes)
        read_done = time.perf_counter()
        image = await run_in_threadpool(decode_image, data, max_pixels=state.settings.max_pixels)  # (3, H, W)
        decode_done = time.perf_counter()
        labels, wait_s, inference_s = await run_inference(state, image)
        encode_start = time.perf_counter()
        encoded = await run_in_threadpool(
            encode_result, image, labels, class_names=state.meta.class_names, palette=state.meta.palette,
            alpha=alpha, include_labels=output == "json",
        )
        end = time.perf_counter()
    finally:
        state.in_progress -= 1
    timing_ms = {
        "read": read_done - start, "decode": decode_done - read_done, "queue": wait_s, "inference": inference_s,
        "encode": end - encode_start, "total": end - start,
    }
    timing_ms = {key: round(1000 * seconds, 1) for key, seconds in timing_ms.items()}
    headers = {"Server-Timing": ", ".join(f"{key};dur={value}" for key, value in timing_ms.items())}
    if output == "png":
        return Response(encoded.overlay_png, media_type="image/png", headers=headers)
    height, width = labels.shape
    return JSONResponse({
        "model": state.meta.model,
        "width": width,
        "height": height,
        "classes": encoded.classes,
        "timing_ms": timing_ms,
        "label_png": base64.b64encode(encoded.label_png).decode("ascii"),
        "overlay_png": base64.b64encode(encoded.overlay_png).decode("ascii"),
    }, headers=headers)


async def model_info(request: Request) -> Response:
    """``GET /v1/model``: the model's name, classes with their colours, and the server's limits."""
    state: ServeState = request.app.state.serve
    meta, settings = state.meta, state.settings
    return JSONResponse({
        "name": meta.model,
        "num_classes": meta.num_classes,
        "classes": [
            {"index": i, "name": name, "color": list(meta.palette[i]) if i < len(meta.palette) else [0, 0, 0]}
            for i, name in enumerate(meta.class_names)
        ],
        "palette": [list(color) for color in meta.palette],
        "normalization": meta.normalization,
        "device": str(state.device),
        "limits": {
            "max_upload_bytes": settings.max_upload_bytes,
            "max_pixels": settings.max_pixels,
            "max_queue": settings.max_queue,
        },
    })


async def healthz(request: Request) -> Response:
    state: ServeState = request.app.state.serve
    return JSONResponse({"status": "ok", "in_progress": state.in_progress, "max_queue": state.settings.max_queue})


async def page(request: Request) -> Response:
    return FileResponse(STATIC_DIR / "index.html", headers=PAGE_HEADERS)


# ---------------------------------------------------------------- errors as JSON


async def api_error(request: Request, error: ApiError) -> Response:
    return JSONResponse({"error": str(error)}, status_code=error.status, headers=error.headers)


async def bad_image(request: Request, error: BadImage) -> Response:
    return JSONResponse({"error": str(error)}, status_code=error.status)


async def http_error(request: Request, error: HTTPException) -> Response:
    """Starlette's own errors (404, 405, a malformed multipart body's 400) as JSON too."""
    return JSONResponse({"error": error.detail}, status_code=error.status_code, headers=error.headers)


async def client_gone(request: Request, error: ClientDisconnect) -> Response:
    return JSONResponse({"error": "the client disconnected during the upload"}, status_code=400)


async def server_error(request: Request, error: Exception) -> Response:
    return JSONResponse({"error": f"internal error: {type(error).__name__}"}, status_code=500)


# ---------------------------------------------------------------- the app


def create_app(model: nn.Module, meta: ModelMeta, *, settings: ServeSettings | None = None,
               device: torch.device | str = "cpu") -> Starlette:
    """The ASGI app serving ``model`` (any ``(N, 3, H, W) -> (N, K, H, W)`` module; ``meta`` names its classes,
    colours and input normalization). Pass it to uvicorn, or to Starlette's ``TestClient``."""
    device = torch.device(device)
    app = Starlette(
        routes=[
            Route("/", page, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/v1/model", model_info, methods=["GET"]),
            Route("/v1/segment", segment, methods=["POST"]),
            Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        ],
        exception_handlers={
            ApiError: api_error, BadImage: bad_image, HTTPException: http_error, ClientDisconnect: client_gone,
            Exception: server_error,
        },
    )
    app.state.serve = ServeState(model=model.to(device).eval(), meta=meta, settings=settings or ServeSettings(),
                                 device=device)
    return app


def load_serving_model(checkpoint: str | Path | None = None, *, device: torch.device | str = "cpu",
                       bf16: bool = False) -> tuple[nn.Module, ModelMeta]:
    """The checkpoint's model (the shipped CamVid model when ``None``), made fast for inference on ``device``
    (``bf16``: bf16 autocast where the hardware has fast bf16 kernels, see ``fcnseg.inference_model``). An int8
    ONNX file from ``fcnseg quantize`` (told by its content) runs as it is, in OpenVINO or onnxruntime."""
    from fcnseg.checkpoint import default_checkpoint_path
    from fcnseg.inference import inference_model
    from fcnseg.inference.onnx_model import OnnxSegmenter, load_model_file

    checkpoint = checkpoint if checkpoint is not None else default_checkpoint_path()
    model, meta = load_model_file(checkpoint)
    if meta.in_channels != 3:
        raise ValueError(f"fcnseg serve segments RGB photos; {meta.model} takes {meta.in_channels} input channels")
    if isinstance(model, OnnxSegmenter):  # an int8 file from fcnseg quantize: already a tuned runtime
        if bf16:
            raise ValueError(f"--bf16 does not apply to an int8 ONNX model ({checkpoint}): it runs in int8")
        return model, meta
    # the rewrites are checked and timed on it: a photo's proportions at a size that tunes in a second or two
    example = torch.randn(1, meta.in_channels, 180, 240, device=device)
    return inference_model(model.to(device), example, bf16=bf16), meta
