"""The browser page, in a real headless Chromium (Debian's, driven by Playwright) against the real
`bentoml serve`. A screenshot is kept in test-artifacts/ui.png."""

import shutil

import pytest

from conftest import ROOT
from fixtures import scene

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = ROOT / "test-artifacts"
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (apt-get install chromium)")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield b
        b.close()


def test_page_segments_and_shows_errors(server, browser, tmp_path):
    img = tmp_path / "scene.png"
    scene(96, 72).save(img)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    console_errors = []
    page.on("pageerror", lambda e: console_errors.append(str(e)))
    page.goto(server["url"] + "/ui/")
    assert page.title() == "dit-grounding"
    page.wait_for_function("document.querySelector('#model-info').textContent.startsWith('model ')")
    page.set_input_files("#file", str(img))
    page.fill("#expressions", "the red circle\nthe blue square")
    page.click("#segment")
    page.wait_for_selector(".result .score", state="attached")
    page.wait_for_function(
        "document.querySelectorAll('.result').length === 2 && "
        "document.querySelector('.result .score').textContent.length > 0"
    )
    cards = page.query_selector_all(".result")
    assert [c.query_selector(".expr").text_content() for c in cards] == ["the red circle", "the blue square"]
    score = float(cards[0].query_selector(".score").text_content())
    assert 0.0 <= score <= 1.0
    size = page.eval_on_selector(".result .overlay", "c => [c.width, c.height]")
    assert size == [96, 72]  # the overlay was drawn at the image's size
    # the overlay canvas is not blank: it differs from the plain image somewhere (mask tint)
    assert (
        page.eval_on_selector(
            ".result .overlay",
            """c => {
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let green = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i + 1] > d[i] + 40 && d[i + 1] > d[i + 2] + 40) green++;
        return green; }""",
        )
        > 0
    )
    assert page.get_attribute(".result .dl-mask", "href").startswith("data:image/png;base64,")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui.png"), full_page=True)
    # heatmap only
    page.click("#ground")
    page.wait_for_function(
        "document.querySelectorAll('.result .overlay').length === 0 && "
        "document.querySelectorAll('.result .heat').length === 2"
    )
    # masks from region proposals: the select sends the option; SAM 3's is off without a SAM 3
    assert page.eval_on_selector("#proposals option[value=concept]", "o => o.disabled")
    assert not page.eval_on_selector("#proposals option[value=regions]", "o => o.disabled")
    page.select_option("#proposals", "regions")
    with page.expect_response(lambda r: r.url.endswith("/segment")) as answer:
        page.click("#segment")
    first = answer.value.json()["results"][0]  # the option arrived: the proposer's mask, or its fallback note
    assert first["segmenter"] == "regions" or any("proposals='regions'" in w for w in first["warnings"])
    page.wait_for_function("document.querySelectorAll('.result .overlay').length === 2")
    page.select_option("#proposals", "none")
    # a corrupt upload: the server's message is shown
    page.set_input_files("#file", str(bad))
    page.click("#segment")
    page.wait_for_selector("#error:not([hidden])")
    text = page.text_content("#error")
    assert "400" in text and "cannot read image" in text
    assert not console_errors, console_errors
    page.close()


def test_page_video_progress(server, browser, tmp_path):
    from fixtures import moving_video
    from grounding.pipeline.video_output import OverlayWriter

    frames, _ = moving_video(12, 64, 48)
    w = OverlayWriter(tmp_path / "clip.mp4", 8)
    for f in frames:
        w.write(f)
    w.close()
    page = browser.new_page(viewport={"width": 1200, "height": 1000})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server["url"] + "/ui/")
    page.fill("#expressions", "the red circle")
    page.set_input_files("#video-file", str(tmp_path / "clip.mp4"))
    page.click("#video-run")
    page.wait_for_selector("#video-result:not([hidden])", timeout=120_000)
    assert page.eval_on_selector("#video-progress", "p => [p.value, p.max]") == [12, 12]
    assert page.text_content("#video-summary").startswith("12 frames")
    assert page.get_attribute("#video-overlay", "src").startswith("data:video/mp4;base64,")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui-video.png"), full_page=True)
    # a file that is not a video: the task fails and the page says why
    (tmp_path / "bad.mp4").write_bytes(b"not a video at all" * 10)
    page.set_input_files("#video-file", str(tmp_path / "bad.mp4"))
    page.click("#video-run")
    page.wait_for_selector("#error:not([hidden])", timeout=60_000)
    assert "cannot read video" in page.text_content("#error")
    assert not errors, errors
    page.close()


def test_page_sends_the_api_key(guarded, browser, tmp_path):
    """Served without a key, the page says one is needed; once typed, its calls carry it."""
    from conftest import API_KEY

    img = tmp_path / "scene.png"
    scene(64, 48).save(img)
    page = browser.new_page()
    page.goto(guarded.url + "/ui/")
    page.wait_for_function("document.querySelector('#model-info').textContent.includes('API key')")
    page.set_input_files("#file", str(img))
    page.fill("#expressions", "the red circle")
    page.click("#segment")
    page.wait_for_selector("#error:not([hidden])")
    assert "401" in page.text_content("#error")
    page.fill("#api-key", API_KEY)
    page.dispatch_event("#api-key", "change")
    page.wait_for_function("document.querySelector('#model-info').textContent.startsWith('model ')")
    page.click("#segment")
    page.wait_for_function(
        "document.querySelectorAll('.result .score').length === 1 && "
        "document.querySelector('.result .score').textContent.length > 0"
    )
    assert page.is_hidden("#error")
    page.close()


def test_page_draws_each_instance_in_its_own_colour(demo_server, browser, tmp_path):
    from PIL import Image, ImageDraw

    img = tmp_path / "two.png"
    im = Image.new("RGB", (64, 64), (235, 235, 235))
    d = ImageDraw.Draw(im)
    d.ellipse([6, 22, 22, 38], fill=(220, 30, 30))
    d.ellipse([42, 22, 58, 38], fill=(220, 30, 30))
    d.rectangle([26, 50, 38, 62], fill=(30, 40, 220))
    im.save(img)
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(demo_server.url + "/ui/")
    page.wait_for_function("document.querySelector('#model-info').textContent.startsWith('model ')")
    page.set_input_files("#file", str(img))
    page.fill("#expressions", "the red circles")
    page.check("#instances")
    page.click("#segment")
    page.wait_for_function(
        "document.querySelector('.result .overlay') && document.querySelector('.result .overlay').dataset.instances"
    )
    assert page.get_attribute(".result .overlay", "data-instances") == "2"
    assert page.text_content(".result .present").startswith("yes — 2 instances (presence ")
    # two colours on the canvas: green-tinted pixels on the left circle, orange-tinted on the right
    left, right = page.eval_on_selector(
        ".result .overlay",
        """c => {
        const ctx = c.getContext('2d');
        const px = (x, y) => Array.from(ctx.getImageData(x, y, 1, 1).data);
        return [px(14, 30), px(50, 30)]; }""",
    )
    assert left != right
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui-instances.png"), full_page=True)
    assert not errors, errors
    page.close()


def test_first_contact_page_on_a_photograph(demo_server, browser):
    """The shipped model on a real photograph, as a new user meets it: the banner says what the
    model knows, the photograph is one click away, the answer is "not found" with the kept mask
    drawn only as a dashed outline (no green fill, no box), and the threshold field shows the
    model's own value and is not sent until changed. Screenshot: test-artifacts/first-contact.png."""
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    # the form fields of every request the page makes (Playwright does not expose multipart bodies)
    page.add_init_script("""const send = window.fetch; window.sentFields = [];
        window.fetch = (url, opts) => {
          if (opts && opts.body instanceof FormData) window.sentFields.push([...opts.body.keys()]);
          return send(url, opts); };""")
    sent = lambda: page.evaluate("window.sentFields[window.sentFields.length - 1]")  # noqa: E731
    page.goto(demo_server.url + "/ui/")
    page.wait_for_selector("#card:not([hidden])")
    assert "shapes world" in page.text_content("#card .domain")
    assert page.text_content("#card .calibration").startswith("calibrated: python -m training calibrate")
    assert page.input_value("#threshold") == "0.4"  # the model's calibrated value, not a page default
    page.wait_for_selector("#examples button.example")
    assert page.eval_on_selector_all("#examples button.example", "bs => bs.length") == 4
    page.click("#examples button.example:has-text('the woman in uniform')")
    page.wait_for_function("document.querySelector('#file-name').textContent.startsWith('hopper.jpg')")
    assert page.input_value("#expressions") == "the woman in uniform"
    page.click("#segment")
    page.wait_for_function(
        "document.querySelector('.result .overlay') && document.querySelector('.result .overlay').dataset.drawn"
    )
    assert page.get_attribute(".result .overlay", "data-drawn") == "best-guess"
    assert page.text_content(".result .present").startswith("no — not found (presence 0.")
    assert "best guess" in page.text_content(".result .present")
    assert page.text_content(".result .box") == "— (nothing found)"
    assert "expression" in sent() and "threshold" not in sent()
    green = page.eval_on_selector(
        ".result .overlay",
        """c => {
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i + 1] > d[i] + 60 && d[i + 1] > d[i + 2] + 60) n++;
        return n; }""",
    )
    assert green == 0  # no found-object tint anywhere
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "first-contact.png"), full_page=True)
    # once the user changes the threshold, it is sent
    page.fill("#threshold", "0.5")
    page.dispatch_event("#threshold", "input")
    page.click("#segment")
    page.wait_for_function("window.sentFields.length === 2")
    assert "threshold" in sent()
    assert not errors, errors
    page.close()
