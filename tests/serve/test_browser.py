"""Debian's Chromium, driven by Playwright, draws and uploads digits in the running app."""
import json
import os
import shutil

import pytest

pytestmark = pytest.mark.slow
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def page():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if sync_playwright is None or not shutil.which(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail("CI must have playwright and /usr/bin/chromium (.ci/run installs them)")
        pytest.skip("playwright or /usr/bin/chromium is not installed")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser.new_page(viewport={"width": 1200, "height": 950})
        browser.close()


def _result(page) -> str:
    page.wait_for_function(
        "() => { const t = document.querySelector('#classify-latency textarea'); return t && t.value.includes('ms'); }",
        timeout=30_000)
    page.wait_for_timeout(400)  # let the label's fade-in finish before the screenshot
    return page.inner_text("#classify-label").split("\n")[1].strip()


def test_draw_a_one(page, app_url, tmp_path):
    page.goto(app_url)
    page.wait_for_selector("#classify-sketch canvas", timeout=30_000)
    page.wait_for_timeout(1000)  # no tool is picked by the test: the page opens ready to draw
    box = page.query_selector("#classify-sketch canvas").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y - 110)
    page.mouse.down()
    for i in range(23):
        page.mouse.move(x, y - 110 + 10 * i)
    page.mouse.up()  # no button press: the prediction follows the stroke
    label = _result(page)
    page.screenshot(path=str(tmp_path / "draw.png"))
    assert label == "1", f"a vertical stroke was read as {label!r}; see {tmp_path / 'draw.png'}"


def test_upload_a_held_out_digit(page, app_url, served_bundle, tmp_path):
    manifest = json.loads((served_bundle / "manifest.json").read_text())
    name = next(n for n in manifest["examples"] if n.split("/")[1].startswith("7_"))
    page.goto(app_url)
    page.get_by_role("tab", name="Upload").click()
    page.set_input_files("#classify-upload input[type=file]", str(served_bundle / name))
    page.wait_for_selector("#classify-upload img", timeout=30_000)
    page.click("#classify-upload-btn")
    label = _result(page)
    page.screenshot(path=str(tmp_path / "upload.png"))
    assert (tmp_path / "upload.png").stat().st_size > 10_000
    assert label == "7"


def test_non_image_upload_shows_a_message(page, app_url, tmp_path):
    (tmp_path / "fake.png").write_text("not an image")
    page.goto(app_url)
    page.get_by_role("tab", name="Upload").click()
    page.set_input_files("#classify-upload input[type=file]", str(tmp_path / "fake.png"))
    page.wait_for_timeout(1500)
    page.click("#classify-upload-btn")
    toast = page.wait_for_selector("text=not an image this app can read", timeout=30_000)
    assert toast.is_visible()
    page.wait_for_timeout(500)  # the toast slides in
    page.screenshot(path=str(tmp_path / "error.png"))
