"""``fcnseg serve``'s HTTP API through Starlette's test client and httpx2's ASGI transport: good images in every
mode, every kind of bad input (each a clear 4xx JSON error, never a 500), the bounded queue, a responsive event
loop while the model works, correct answers under concurrency, and one request to the shipped model."""

import asyncio
import base64
import io
import struct
import threading
import time
import zlib

import httpx2
import numpy as np
import pytest
import torch
from PIL import Image
from starlette.testclient import TestClient
from torch import nn

from fcnseg.checkpoint import ASSETS, ModelMeta, default_checkpoint_path
from fcnseg.cli import main
from fcnseg.data.palettes import generated_palette
from fcnseg.predict import predict_labels as label_map
from fcnseg.serve import ServeSettings, create_app, load_serving_model
from fcnseg.serve.segment import decode_image

NUM_CLASSES = 5
META = ModelMeta(
    model="tiny-test", num_classes=NUM_CLASSES, class_names=("sky", "road", "car", "tree", "person"),
    palette=generated_palette(NUM_CLASSES), normalization="imagenet",
)


class TinySegmenter(nn.Module):
    """``(N, 3, H, W) -> (N, K, H, W)``: a seeded 1x1 convolution, so labels depend on each pixel's colour."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.score = nn.Conv2d(3, num_classes, 1)
        with torch.no_grad():
            self.score.weight.copy_(torch.randn(self.score.weight.shape, generator=generator))
            self.score.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.score(x)


class SlowSegmenter(TinySegmenter):
    """TinySegmenter that takes ``delay`` seconds (sleeping, as a busy model would hold the inference thread)."""

    def __init__(self, delay: float):
        super().__init__()
        self.delay = delay

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.delay)
        return super().forward(x)


def make_app(model: nn.Module | None = None, **limits):
    return create_app(model or TinySegmenter(), META, settings=ServeSettings(**limits))


@pytest.fixture(scope="module")
def client():
    with TestClient(make_app()) as test_client:
        yield test_client


def random_photo(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def expected_labels(data: bytes) -> np.ndarray:
    """Labels computed without HTTP: the same decoding, then the tiny model directly."""
    image = decode_image(data, max_pixels=10**8)
    return label_map(TinySegmenter(), image, normalization=META.normalization).numpy()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_header_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width x height`` grey pixels: a decompression bomb's shape."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + png_chunk(b"IEND", b""))


def post_image(client, data: bytes, *, name: str = "photo.png", query: str = "", content_type: str = "image/png"):
    return client.post(f"/v1/segment{query}", files={"image": (name, data, content_type)})


# ---------------------------------------------------------------- the page, the model, health


def test_model_description_and_health(client):
    model = client.get("/v1/model").json()
    assert model["name"] == "tiny-test" and model["num_classes"] == NUM_CLASSES
    assert [c["name"] for c in model["classes"]] == list(META.class_names)
    assert model["palette"] == [list(color) for color in META.palette]
    assert model["classes"][2]["color"] == list(META.palette[2])
    assert model["limits"] == {"max_upload_bytes": 10_000_000, "max_pixels": 12_000_000, "max_queue": 32}
    assert client.get("/healthz").json() == {"status": "ok", "in_progress": 0, "max_queue": 32}


def test_page_and_its_files_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'type="file"' in page.text and 'id="opacity"' in page.text and "/static/app.js" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        answer = client.get(f"/static/{name}")
        assert answer.status_code == 200 and kind in answer.headers["content-type"]


# ---------------------------------------------------------------- good images


def test_segment_returns_classes_shares_timing_and_pngs(client):
    data = encode(random_photo(48, 32))
    answer = post_image(client, data)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["width"], body["height"], body["model"]) == (48, 32, "tiny-test")
    assert set(body["timing_ms"]) == {"read", "decode", "queue", "inference", "encode", "total"}
    assert body["timing_ms"]["total"] >= body["timing_ms"]["inference"] >= 0
    assert "inference;dur=" in answer.headers["server-timing"]

    labels = expected_labels(data)
    label_png = Image.open(io.BytesIO(base64.b64decode(body["label_png"])))
    assert label_png.mode == "P" and label_png.size == (48, 32)
    np.testing.assert_array_equal(np.array(label_png), labels)  # pixel values are the class indices
    assert label_png.getpalette()[:3 * NUM_CLASSES] == [v for color in META.palette for v in color]

    counts = {int(k): int(v) for k, v in zip(*np.unique(labels, return_counts=True))}  # independent count
    assert {c["index"]: c["share"] for c in body["classes"]} == pytest.approx(
        {k: v / labels.size for k, v in counts.items()}, abs=1e-6)
    assert [c["share"] for c in body["classes"]] == sorted((c["share"] for c in body["classes"]), reverse=True)
    for c in body["classes"]:
        assert c["name"] == META.class_names[c["index"]] and c["color"] == list(META.palette[c["index"]])

    overlay = Image.open(io.BytesIO(base64.b64decode(body["overlay_png"])))
    assert overlay.mode == "RGB" and overlay.size == (48, 32)


def test_png_format_returns_the_overlay_at_the_requested_opacity(client):
    data = encode(random_photo(40, 24, seed=1))
    answer = post_image(client, data, query="?format=png&alpha=1")
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
    overlay = np.array(Image.open(io.BytesIO(answer.content)))  # (H, W, 3)
    colours = np.array(META.palette, dtype=np.uint8)[expected_labels(data)]  # alpha 1: the class colours alone
    np.testing.assert_array_equal(overlay, colours)
    photo = np.array(Image.open(io.BytesIO(data)))
    answer = post_image(client, data, query="?format=png&alpha=0")
    np.testing.assert_array_equal(np.array(Image.open(io.BytesIO(answer.content))), photo)


def _image_in(mode: str, fmt: str, **options) -> bytes:
    image = random_photo(30, 20, seed=2).convert(mode) if mode not in ("I;16", "F") else Image.new(mode, (30, 20), 7)
    return encode(image, fmt, **options)


@pytest.mark.parametrize("mode, fmt", [
    ("RGB", "JPEG"), ("L", "PNG"), ("LA", "PNG"), ("RGBA", "PNG"), ("P", "PNG"), ("1", "PNG"), ("I;16", "PNG"),
    ("CMYK", "JPEG"), ("RGBA", "WEBP"), ("RGB", "BMP"), ("P", "GIF"), ("RGB", "TIFF"), ("F", "TIFF"),
])
def test_every_common_format_and_mode_is_segmented(client, mode, fmt):
    answer = post_image(client, _image_in(mode, fmt), name=f"photo.{fmt.lower()}")
    assert answer.status_code == 200, answer.text
    assert (answer.json()["width"], answer.json()["height"]) == (30, 20)


def test_animated_gif_uses_its_first_frame(client):
    frames = [random_photo(16, 12, seed=s).convert("P") for s in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    answer = post_image(client, buffer.getvalue(), name="anim.gif")
    assert answer.status_code == 200 and answer.json()["width"] == 16


def test_exif_orientation_is_applied(client):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed, as phone cameras write it
    data = encode(random_photo(40, 20), "JPEG", exif=exif)
    body = post_image(client, data, name="phone.jpg").json()
    assert (body["width"], body["height"]) == (20, 40)  # as a browser shows it


# ---------------------------------------------------------------- bad input: clear 4xx JSON, never a 500

GOOD_PNG = encode(random_photo(64, 48, seed=3))
CORRUPT_PNG = GOOD_PNG[:60] + bytes(255 - b for b in GOOD_PNG[60:-20]) + GOOD_PNG[-20:]

BAD_FILES = {
    "empty file": (b"", 422, "empty"),
    "text file": (b"name,value\nroad,1\n" * 20, 415, "not an image"),
    "svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', 415, "not an image"),
    "pdf": (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", 415, "not an image"),
    "eps (never decoded: Ghostscript)": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", 415, "not an image"),
    "truncated png": (GOOD_PNG[: len(GOOD_PNG) // 2], 422, "truncated or corrupt"),
    "corrupt png data": (CORRUPT_PNG, 422, "truncated or corrupt"),
    "png signature only": (b"\x89PNG\r\n\x1a\n", 422, "PNG image could not be read (truncated or corrupt?)"),
    "truncated jpeg header": (encode(random_photo(64, 48), "JPEG")[:300], 422, "truncated or corrupt"),
    "truncated jpeg data": (encode(random_photo(64, 48), "JPEG")[:-400], 422, "truncated or corrupt"),
    "bomb over the pixel limit": (png_header_claiming(9000, 9000), 413,
                                  "9000x9000 = 81 megapixels, over the limit of 12 megapixels (--max-pixels)"),
    "bomb over Pillow's limit": (png_header_claiming(30000, 30000), 413, "decompression bomb"),
}


@pytest.mark.parametrize("name", BAD_FILES)
def test_bad_files_get_a_clear_4xx(client, name):
    data, status, words = BAD_FILES[name]
    started = time.perf_counter()
    answer = post_image(client, data)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert words in answer.json()["error"]
    assert time.perf_counter() - started < 2  # a bomb is refused on its header, never decoded


def test_pixel_limit_is_configurable():
    with TestClient(make_app(max_pixels=20 * 20)) as small:
        assert post_image(small, encode(random_photo(20, 20))).status_code == 200
        answer = post_image(small, encode(random_photo(21, 20)))
        assert answer.status_code == 413
        assert answer.json()["error"] == "the image is 21x20 = 420 pixels, over the limit of 400 pixels (--max-pixels)"


def test_upload_over_the_size_limit_is_refused_before_reading_it():
    with TestClient(make_app(max_upload_bytes=1_000_000)) as small:
        answer = post_image(small, b"\0" * 1_300_000)
        assert answer.status_code == 413
        assert answer.json()["error"] == "upload is 1.3 MB, over the 1 MB limit (--max-upload-mb)"
        answer = post_image(small, encode(random_photo(20, 20)))
        assert answer.status_code == 200


@pytest.mark.anyio
async def test_streamed_upload_without_length_is_cut_at_the_limit():
    boundary = "fcnsegboundary"

    async def chunks():  # chunked transfer: no Content-Length to check up front
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"big.png\"\r\n"
               "Content-Type: image/png\r\n\r\n").encode()
        for _ in range(40):
            yield b"\0" * 50_000
        yield f"\r\n--{boundary}--\r\n".encode()

    transport = httpx2.ASGITransport(app=make_app(max_upload_bytes=1_000_000))
    async with httpx2.AsyncClient(transport=transport, base_url="http://test") as client:
        answer = await client.post("/v1/segment", content=chunks(),
                                   headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert answer.status_code == 413 and "over the 1 MB limit" in answer.json()["error"]


def test_malformed_requests_get_a_clear_4xx(client):
    cases = [
        (client.post("/v1/segment", json={"image": "photo.png"}), 415, "multipart/form-data"),
        (client.post("/v1/segment", content=GOOD_PNG, headers={"content-type": "image/png"}), 415, "curl -F"),
        (client.post("/v1/segment", files={"photo": ("a.png", GOOD_PNG)}), 400, "no field named 'image'"),
        (client.post("/v1/segment", data={"image": "text"}, files={"other": ("a.png", GOOD_PNG)}), 400,
         "must be a file"),
        (client.post("/v1/segment", data={"image": "photo.png"}), 415, "multipart/form-data"),
        (client.post("/v1/segment", files=[("image", ("a.png", GOOD_PNG)), ("image", ("b.png", GOOD_PNG))]),
         400, "files"),
        (client.post("/v1/segment", content=b"--x\r\ngarbage",
                     headers={"content-type": "multipart/form-data; boundary=y"}), 400, ""),
        (client.post("/v1/segment", content=b"x", headers={"content-type": "multipart/form-data"}), 400, ""),
        (post_image(client, GOOD_PNG, query="?format=jpeg"), 400, "format must be"),
        (post_image(client, GOOD_PNG, query="?alpha=2"), 400, "alpha must be"),
        (post_image(client, GOOD_PNG, query="?alpha=nan"), 400, "alpha must be"),
        (client.get("/v1/segment"), 405, ""),
        (client.get("/v2/segment"), 404, ""),
    ]
    for answer, status, words in cases:
        assert answer.status_code == status, (answer.request.url, answer.text)
        assert words in answer.json()["error"]


# ---------------------------------------------------------------- load: bounded queue, responsive loop


@pytest.mark.anyio
async def test_requests_beyond_the_queue_get_503_and_the_rest_are_answered():
    app = make_app(SlowSegmenter(delay=0.5), max_queue=2)
    transport = httpx2.ASGITransport(app=app)
    images = [encode(random_photo(24, 16, seed=s)) for s in range(6)]
    async with httpx2.AsyncClient(transport=transport, base_url="http://test", timeout=30) as client:
        answers = await asyncio.gather(*(
            client.post("/v1/segment", files={"image": ("p.png", data, "image/png")}) for data in images))
        statuses = [answer.status_code for answer in answers]
        assert sorted(statuses) == [200, 200, 503, 503, 503, 503]
        for answer in answers:
            if answer.status_code == 503:
                assert int(answer.headers["retry-after"]) >= 1 and "--max-queue 2" in answer.json()["error"]
        assert (await client.get("/healthz")).json()["in_progress"] == 0  # every slot was given back
        answer = await client.post("/v1/segment", files={"image": ("p.png", images[0], "image/png")})
        assert answer.status_code == 200


@pytest.mark.anyio
async def test_health_answers_while_the_model_works():
    transport = httpx2.ASGITransport(app=make_app(SlowSegmenter(delay=1.0)))
    async with httpx2.AsyncClient(transport=transport, base_url="http://test", timeout=30) as client:
        slow = asyncio.create_task(client.post("/v1/segment", files={"image": ("p.png", GOOD_PNG, "image/png")}))
        for _ in range(100):  # until the request is in progress
            health = await client.get("/healthz")
            if health.json()["in_progress"] == 1:
                break
            await asyncio.sleep(0.01)
        started = time.perf_counter()
        health = await client.get("/healthz")
        assert health.status_code == 200 and health.json()["in_progress"] == 1
        assert time.perf_counter() - started < 0.25 and not slow.done()
        assert (await slow).status_code == 200


@pytest.mark.anyio
async def test_concurrent_requests_get_their_own_answers():
    transport = httpx2.ASGITransport(app=make_app(SlowSegmenter(delay=0.02)))
    images = [encode(random_photo(20 + 3 * s, 16 + s, seed=10 + s)) for s in range(8)]
    async with httpx2.AsyncClient(transport=transport, base_url="http://test", timeout=30) as client:
        answers = await asyncio.gather(*(
            client.post("/v1/segment", files={"image": ("p.png", data, "image/png")}) for data in images))
    for data, answer in zip(images, answers):
        assert answer.status_code == 200
        labels = np.array(Image.open(io.BytesIO(base64.b64decode(answer.json()["label_png"]))))
        np.testing.assert_array_equal(labels, expected_labels(data))


def test_threaded_clients_on_a_real_event_loop():
    """The same through Starlette's TestClient from several threads (one event loop, as under uvicorn)."""
    images = [encode(random_photo(24, 20, seed=20 + s)) for s in range(6)]
    results = [None] * len(images)
    with TestClient(make_app(SlowSegmenter(delay=0.02))) as shared:
        def worker(i):
            results[i] = post_image(shared, images[i])

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(images))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    for data, answer in zip(images, results):
        labels = np.array(Image.open(io.BytesIO(base64.b64decode(answer.json()["label_png"]))))
        np.testing.assert_array_equal(labels, expected_labels(data))


# ---------------------------------------------------------------- the shipped model, the CLI


def test_shipped_model_segments_a_road_scene():
    model, meta = load_serving_model(None)
    photo = Image.open(ASSETS / "examples" / "0016E5_07997.png").convert("RGB").resize((240, 180))
    with TestClient(create_app(model, meta)) as shipped:
        stored = torch.load(default_checkpoint_path(), map_location="cpu", weights_only=True)
        assert shipped.get("/v1/model").json()["name"] == stored["model"] == "fcn4s-lite1"
        body = post_image(shipped, encode(photo)).json()
    shares = {c["name"]: c["share"] for c in body["classes"]}
    assert (body["width"], body["height"]) == (240, 180)
    assert shares["Road"] > 0.15 and shares["Building"] > 0.15


def test_cli_serve_flags_and_bad_limits(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    for flag in ("--checkpoint", "--host", "--port", "--max-upload-mb", "--max-pixels", "--max-queue", "--threads"):
        assert flag in out
    assert "127.0.0.1" in out
    assert main(["serve", "--max-queue", "0"]) == 2
    assert "max_queue must be at least 1" in capsys.readouterr().err


def test_cli_serve_says_what_to_install_when_the_server_is_missing(monkeypatch, capsys):
    import importlib.util

    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args):  # as if uvicorn were not installed
        return None if name == "uvicorn" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert main(["serve"]) == 2
    assert "pip install 'fcnseg[serve]'" in capsys.readouterr().err
