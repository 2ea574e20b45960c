"""The chat page in a real browser: Debian's Chromium, driven by Playwright's Python API.

The page is served for real (uvicorn on 127.0.0.1) in both of its modes: the model in-process
(``vlkit webui MODEL``) and a proxy to a running ``vlkit serve`` (``vlkit webui --server URL``).
What the browser shows is compared with ``pipeline()``'s greedy answer for the same input.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import httpx
import pytest

import vlkit
from vlkit.testing.server import ThreadedServer

sync_api = pytest.importorskip("playwright.sync_api")
pytest.importorskip("uvicorn")

CHROMIUM = os.environ.get("VLKIT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None and os.environ.get("VLKIT_REQUIRE_BROWSER"):  # CI: a missing browser is a failure
    raise RuntimeError("VLKIT_REQUIRE_BROWSER is set but there is no chromium executable (apt-get install chromium)")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium executable (apt-get install chromium)")

#: the flags a root, network-less machine needs (no sandbox as root; no calls home)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
KEY = "sk-webui-test"
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "images" / "webui.png"


@pytest.fixture(scope="module")
def pipe(llava_dir):
    p = vlkit.pipeline(llava_dir, engine_config=vlkit.EngineConfig(num_blocks=512, max_batch_size=16))
    yield p
    p.close()


@pytest.fixture(scope="module")
def local_page(pipe):
    from vlkit.webui import create_local_app

    s = ThreadedServer(pipe, app=create_local_app(pipe, model_name="tiny-llava", max_new_tokens=12))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture()
def page(browser, local_page):
    ctx = browser.new_context(viewport={"width": 1200, "height": 800})
    pg = ctx.new_page()
    pg.set_default_timeout(60_000)
    pg.goto(local_page.url + "/")
    pg.wait_for_selector("body[data-ready='1']")
    yield pg
    ctx.close()


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> Path:
    from vlkit.testing import image_set

    path = tmp_path_factory.mktemp("img") / "square.png"
    image_set()["square"].save(path)
    return path


def _greedy(pipe, text: str, image: Path | None, max_tokens: int, history=(), ignore_eos: bool = False) -> str:
    import base64

    content: list = [{"type": "text", "text": text}]
    if image is not None:
        uri = "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode()
        content.insert(0, {"type": "image_url", "image_url": {"url": uri}})
    msgs = [*history, {"role": "user", "content": content}]
    gen = vlkit.GenerationConfig(max_new_tokens=max_tokens, ignore_eos=ignore_eos)
    return pipe(msgs, gen_config=gen, use_tqdm=False).text


def _settings(pg, max_tokens: int, ignore_eos: bool = False) -> None:
    pg.fill("#max-tokens", str(max_tokens))
    pg.fill("#temperature", "0")
    if ignore_eos:
        pg.check("#ignore-eos")


def _ask(pg, text: str, image: Path | None = None) -> None:
    if image is not None:
        before = pg.locator("#attachments img").count()
        pg.set_input_files("#file", str(image))
        pg.wait_for_function(f"document.querySelectorAll('#attachments img').length > {before}")
    pg.fill("#prompt", text)
    pg.click("#send")


def _answer(pg, n: int) -> str:
    """The text of the n-th assistant turn (0-based), once it has finished."""
    turn = pg.locator(".turn.assistant").nth(n)
    pg.wait_for_function(
        "n => { const t = document.querySelectorAll('.turn.assistant')[n];"
        " return t && (t.dataset.state === 'done' || t.dataset.state === 'stopped'); }", arg=n)
    return turn.locator(".text").inner_text()


def _running(pipe) -> int:
    return pipe.engine.stats()["num_running"] + pipe.engine.stats()["num_waiting"]


def test_header_says_random_weights_and_family(page):
    assert page.inner_text("#model-name") == "tiny-llava"
    assert "llava" in page.inner_text("#model-family")
    assert page.is_visible("#random-badge") and page.is_visible("#random-note")


def test_image_question_streams_the_pipeline_greedy_answer(page, pipe, image_file):
    want = _greedy(pipe, "What is in the picture?", image_file, 40, ignore_eos=True)
    _settings(page, 40, ignore_eos=True)  # 40 tokens: enough pieces to see them arrive one by one
    page.evaluate("""() => { window.__seen = []; new MutationObserver(() => {
        const t = document.querySelector('.turn.assistant .text');
        if (t) window.__seen.push(t.textContent); }).observe(document.getElementById('chat'),
        {subtree: true, childList: true, characterData: true}); }""")
    _ask(page, "What is in the picture?", image_file)
    got = _answer(page, 0)
    assert got == want
    seen = [s for s in page.evaluate("window.__seen") if s]
    assert len(set(seen)) > 1, "the answer arrived in one piece, not streamed"
    assert all(want.startswith(s) for s in seen)  # each partial text is a prefix of the final one
    assert page.locator(".turn.user img").count() == 1  # the image is shown in its turn
    if os.environ.get("VLKIT_WEBUI_SCREENSHOT"):  # refreshes docs/images/webui.png
        DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(DOCS_SCREENSHOT))


def test_second_turn_keeps_history_and_images(page, pipe, image_file):
    _settings(page, 8)
    _ask(page, "Describe it.", image_file)
    first = _answer(page, 0)
    _ask(page, "And the colours?")
    second = _answer(page, 1)
    history = [
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + __import__("base64").b64encode(
                image_file.read_bytes()).decode()}},
            {"type": "text", "text": "Describe it."}]},
        {"role": "assistant", "content": first},
    ]
    assert second == _greedy(pipe, "And the colours?", None, 8, history)
    assert page.locator(".turn.user").count() == 2 and page.locator(".turn.user img").count() == 1


def test_regenerate_and_clear(page, pipe, image_file):
    _settings(page, 6)
    _ask(page, "Name one thing.", image_file)
    first = _answer(page, 0)
    page.evaluate("document.querySelector('.turn.assistant').dataset.old = '1'")
    page.click("#regenerate")
    again = _answer(page, 0)
    assert page.locator(".turn.assistant").count() == 1
    assert page.get_attribute(".turn.assistant", "data-old") is None  # a new answer replaced the old one
    assert again == first  # greedy: the regenerated answer is the same
    page.click("#clear")
    assert page.locator(".turn").count() == 0
    _ask(page, "Hello")  # after clear, the conversation starts afresh
    assert _answer(page, 0) == _greedy(pipe, "Hello", None, 6)


def test_drop_and_paste_attach_several_images_to_one_message(page, pipe, image_file):
    import base64

    b64 = base64.b64encode(image_file.read_bytes()).decode()
    make = f"""(name) => {{ const bin = atob('{b64}'); const bytes = new Uint8Array(bin.length);
        for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
        const dt = new DataTransfer(); dt.items.add(new File([bytes], name, {{type: 'image/png'}})); return dt; }}"""
    page.evaluate(f"""() => {{ const make = {make};
        document.getElementById('chat').dispatchEvent(new DragEvent('drop', {{bubbles: true, dataTransfer: make('a.png')}}));
        const paste = new ClipboardEvent('paste', {{bubbles: true, clipboardData: make('b.png')}});
        document.getElementById('prompt').dispatchEvent(paste); }}""")
    page.wait_for_function("document.querySelectorAll('#attachments img').length === 2")
    _settings(page, 6)
    _ask(page, "Compare them.")
    got = _answer(page, 0)
    assert page.locator(".turn.user img").count() == 2
    uri = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + b64}}
    want = pipe([{"role": "user", "content": [uri, uri, {"type": "text", "text": "Compare them."}]}],
                gen_config=vlkit.GenerationConfig(max_new_tokens=6), use_tqdm=False).text
    assert got == want


def test_stop_aborts_the_request_in_the_engine(page, pipe):
    _settings(page, 4000, ignore_eos=True)
    _ask(page, "Count forever.")
    page.wait_for_function("Number(document.querySelector('.turn.assistant')?.dataset.chunks || 0) >= 3")
    assert _running(pipe) == 1
    page.click("#stop")
    assert _answer(page, 0)
    assert page.get_attribute(".turn.assistant", "data-state") == "stopped"
    deadline = time.time() + 10
    while _running(pipe) and time.time() < deadline:
        time.sleep(0.05)
    assert _running(pipe) == 0
    assert page.is_enabled("#send") and not page.is_enabled("#stop")


def test_non_image_upload_shows_error_and_the_session_goes_on(page, pipe, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    page.set_input_files("#file", str(notes))
    page.wait_for_selector(".turn.error")
    assert "notes.txt is not an image" in page.inner_text(".turn.error")
    assert page.locator("#attachments img").count() == 0
    # an image file the server cannot decode: the server's error is shown, the turn is not kept
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nthis is not really a png")
    _settings(page, 6)
    _ask(page, "What is this?", broken)
    page.wait_for_function("document.querySelectorAll('.turn.error').length === 2")
    assert "image" in page.locator(".turn.error").nth(1).inner_text().lower()
    assert page.locator(".turn.user.failed").count() == 1
    _ask(page, "Hello")
    assert _answer(page, 0) == _greedy(pipe, "Hello", None, 6)


def test_two_tabs_are_independent_sessions_served_together(browser, local_page, pipe, image_file):
    ctx = browser.new_context()
    try:
        tabs = [ctx.new_page(), ctx.new_page()]
        for t in tabs:
            t.set_default_timeout(60_000)
            t.goto(local_page.url + "/")
            t.wait_for_selector("body[data-ready='1']")
        # long enough that the first is still running when the second arrives, even on a loaded machine
        _settings(tabs[0], 400, ignore_eos=True)
        _settings(tabs[1], 400, ignore_eos=True)
        peak = {"n": 0}
        _ask(tabs[0], "Tell me about it.", image_file)
        _ask(tabs[1], "Hello there")
        deadline = time.time() + 120
        while time.time() < deadline:
            peak["n"] = max(peak["n"], pipe.engine.stats()["num_running"])
            if all(t.evaluate("document.querySelector('.turn.assistant')?.dataset.state === 'done'") for t in tabs):
                break
            time.sleep(0.01)
        a, b = _answer(tabs[0], 0), _answer(tabs[1], 0)
        assert a and b and a != b
        assert tabs[0].locator(".turn").count() == 2 and tabs[1].locator(".turn").count() == 2  # no cross-talk
        assert tabs[0].locator(".turn.user img").count() == 1 and tabs[1].locator(".turn.user img").count() == 0
        assert peak["n"] == 2, "the two tabs' requests were not in the engine at the same time"
    finally:
        ctx.close()


def test_webui_server_mode_against_vlkit_serve(browser, pipe, image_file):
    """``vlkit webui --server URL --api-key K`` against a running ``vlkit serve`` with that key."""
    from vlkit.webui import create_remote_app

    with ThreadedServer(pipe, model_name="served-llava", api_keys=[KEY]) as upstream:
        with ThreadedServer(None, app=create_remote_app(upstream.url + "/v1", api_key=KEY, max_new_tokens=10)) as ui:
            # the key stays on the proxy: the page and its assets never carry it
            for path in ("/", "/webui/webui.js", "/webui/info"):
                assert KEY not in httpx.get(ui.url + path).text
            ctx = browser.new_context(viewport={"width": 1200, "height": 800})
            try:
                pg = ctx.new_page()
                pg.set_default_timeout(60_000)
                pg.goto(ui.url + "/")
                pg.wait_for_selector("body[data-ready='1']")
                assert pg.inner_text("#model-name") == "served-llava"
                assert "llava" in pg.inner_text("#model-family") and pg.is_visible("#random-badge")
                assert upstream.url in pg.inner_text("#backend")
                _settings(pg, 10)
                _ask(pg, "What is in the picture?", image_file)
                assert _answer(pg, 0) == _greedy(pipe, "What is in the picture?", image_file, 10)
                # stop through the proxy aborts the request in the upstream engine too
                _settings(pg, 4000, ignore_eos=True)
                _ask(pg, "Count forever.")
                pg.wait_for_function("Number(document.querySelectorAll('.turn.assistant')[1]?.dataset.chunks || 0) >= 3")
                pg.click("#stop")
                _answer(pg, 1)
                assert pg.locator(".turn.assistant").nth(1).get_attribute("data-state") == "stopped"
                deadline = time.time() + 10
                while _running(pipe) and time.time() < deadline:
                    time.sleep(0.05)
                assert _running(pipe) == 0
            finally:
                ctx.close()


def test_remote_mode_reports_an_unreachable_server_in_the_chat(browser):
    from vlkit.testing.server import free_port
    from vlkit.webui import create_remote_app

    with ThreadedServer(None, app=create_remote_app(f"http://127.0.0.1:{free_port()}")) as ui:
        ctx = browser.new_context()
        try:
            pg = ctx.new_page()
            pg.set_default_timeout(30_000)
            pg.goto(ui.url + "/")
            pg.wait_for_selector("body[data-ready='1']")
            _ask(pg, "Hello")
            pg.wait_for_selector(".turn.error")
            assert "cannot be reached" in pg.inner_text(".turn.error")
        finally:
            ctx.close()
