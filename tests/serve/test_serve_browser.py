"""End to end: the page of ``fcnseg serve`` in headless Chromium (Debian's ``chromium``, driven by Playwright),
against a real uvicorn server on a free loopback port: upload an image, the overlay and legend appear.

Skips only when no Chromium executable or no Playwright can be found (``.ci/run`` installs both).
"""

import shutil
import socket
import threading
import time

import numpy as np
import pytest
import torch
import uvicorn
from PIL import Image
from torch import nn

from fcnseg.checkpoint import ModelMeta
from fcnseg.data.palettes import generated_palette
from fcnseg.serve import ServeSettings, create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking"]
META = ModelMeta(model="tiny-test", num_classes=3, class_names=("left", "middle", "right"),
                 palette=generated_palette(3), normalization="imagenet")


class ColumnSegmenter(nn.Module):
    """``(N, 3, H, W) -> (N, 3, H, W)``: class 0, 1 or 2 by the third of the image a pixel is in."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, height, width = x.shape
        column = torch.arange(width, device=x.device) * 3 // width  # (W,)
        scores = nn.functional.one_hot(column, 3).T.float()  # (3, W)
        return scores[None, :, None, :].expand(n, 3, height, width)


@pytest.fixture(scope="module")
def server_url():
    app = create_app(ColumnSegmenter(), META, settings=ServeSettings())
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.fixture(scope="module")
def page():
    if CHROMIUM is None:
        pytest.skip("no chromium executable on PATH (.ci/run installs Debian's chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (extra 'dev')")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.set_default_timeout(60_000)  # a loaded 2-core CI machine can be slow; failures still fail
        yield page
        browser.close()


def wait_until(condition, timeout_s: float = 60.0) -> None:
    """Poll ``condition()`` from Python until it holds; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for the page")
        time.sleep(0.05)


def test_upload_shows_overlay_label_map_legend_and_timing(server_url, page, tmp_path):
    photo = tmp_path / "street.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8)).save(photo)
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(server_url + "/")
    # No wait_for_function: its string predicates are eval'd in the page, which the page's CSP forbids.
    page.wait_for_selector("#legend li:nth-child(3)")  # the legend, from GET /v1/model
    assert page.locator("#legend li").count() == 3
    assert "tiny-test" in page.inner_text("#model-name")

    page.set_input_files("#file", str(photo))
    page.wait_for_selector("#overlay-labels[src^='data:image/png']", state="visible", timeout=60_000)
    wait_until(lambda: page.eval_on_selector("#overlay-labels", "img => img.naturalWidth") == 90)
    assert page.is_visible("#overlay-photo") and page.is_visible("#label-image") and page.is_visible("#input-image")
    assert page.eval_on_selector("#label-image", "img => img.naturalHeight") == 60

    legend = page.inner_text("#legend")
    for name in ("left", "middle", "right"):
        assert name in legend
    assert "33.3%" in legend  # each third of the image
    status = page.inner_text("#status")
    assert "90\u00d760" in status and " ms" in status and "inference" in status

    page.fill("#opacity", "80")
    page.dispatch_event("#opacity", "input")
    assert page.eval_on_selector("#overlay-labels", "img => img.style.opacity") == "0.8"
    assert page.inner_text("#opacity-value") == "80%"
    assert not page.is_visible("#error") and errors == []


def test_a_bad_file_shows_the_servers_error(server_url, page, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not really a picture")
    page.goto(server_url + "/")
    page.set_input_files("#file", str(bad))
    page.wait_for_selector("#error", state="visible", timeout=60_000)
    assert "Error 415" in page.inner_text("#error") and "not an image" in page.inner_text("#error")
