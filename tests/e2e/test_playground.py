"""The playground page (`/playground`, docs/playground.md) in a real headless browser: Debian's
chromium driven by Playwright for Python (`executable_path`, never a browser download; .ci/run
installs the package, the `dev` extra installs playwright). Where either is missing the tests
skip and say which.

- hand-written frames through intercepted requests (no server): cells, edits, prompt cells,
  the cut tail, the scrubber, the presets' parameters and the autoregressive fallback;
- live: the tiny checkpoint and the shipped pair (LLaDA2 beside its AR twin) served by
  `unmask serve`; the page's final text equals the non-streamed completion of the same request,
  its step counter the server's forwards, and the browser logs no error. The shipped run saves
  the screenshot docs/ shows (written into docs/images/ with UNMASK_UPDATE_SCREENSHOT=1)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.checkpoints import LING2
from tests.e2e.server_harness import API_KEY, RemoteServer

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "server/api/static"
SCREENSHOT = ROOT / "docs/images/playground.png"
FAKE = "http://playground.test"
WAIT_MS = 90_000  # a run on a busy 2-core machine


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[dev]')")
    path = shutil.which(os.environ.get("UNMASK_CHROMIUM", "chromium"))
    if path is None:
        pytest.skip("no chromium executable (Debian: apt-get install chromium, as .ci/run does)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, timeout=60_000)
        yield b
        b.close()


class Page:
    """A 1200x800 page that keeps what the browser logs as errors."""

    def __init__(self, browser: Any) -> None:
        self.context = browser.new_context(viewport={"width": 1200, "height": 800})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error"
                     else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def snapshot(self) -> dict[str, Any]:
        return self.page.evaluate("window.unmaskPlayground.snapshot()")

    def generate(self) -> dict[str, Any]:
        self.page.click("#run")
        self.page.wait_for_selector("body[data-status=done], body[data-status=error]",
                                    state="attached", timeout=WAIT_MS)
        snap = self.snapshot()
        assert snap["status"] == "done", snap["error"]
        return snap

    def scrub(self, frame: int) -> None:
        self.page.eval_on_selector("#scrubber", "(s, k) => { s.value = String(k); "
                                   "s.dispatchEvent(new Event('input')); }", frame)

    def count(self, selector: str) -> int:
        """Matches on the canvas (the legend holds one of each cell kind)."""
        return self.page.locator("#canvas").locator(selector).count()


@pytest.fixture
def page(browser: Any) -> Iterator[Page]:
    p = Page(browser)
    yield p
    p.context.close()


# ------------------------------------------------------------------ hand-written frames


def _frame(start: int, tokens: list[int | None], committed: list[int], step: int,
           forwards: int, done: bool = False, edited: tuple[int, ...] = (),
           prompt_len: int = 30) -> dict[str, Any]:
    return {"block_start": start, "prompt_len": prompt_len, "tokens": tokens,
            "text": [None if t is None else f"t{t}" for t in tokens],
            "committed": committed, "edited": list(edited),
            "confidence": [None if t is None or start + o < prompt_len else 0.5 + t % 5 / 10
                           for o, t in enumerate(tokens)],
            "step": step, "forwards": forwards, "block_done": done}


def _fake_frames() -> list[dict[str, Any]]:
    """Block @0 holds 30 prompt cells and 2 output cells, block @32 all output; 5 forwards."""
    prompt = list(range(100, 130))
    rest: list[int | None] = [None] * 32
    frames = [_frame(0, [*prompt, 7, None], [30], 1, 1),
              _frame(0, [*prompt, 7, 8], [31], 2, 2, done=True)]
    rest[0:3] = [1, 2, 3]
    frames.append(_frame(32, list(rest), [0, 1, 2], 1, 3))
    rest[3:32] = [4] * 29
    frames.append(_frame(32, list(rest), list(range(3, 32)), 2, 4))
    rest[1] = 9  # LLaDA2.1 editing rewrites a written cell
    frames.append(_frame(32, list(rest), [], 3, 5, done=True, edited=(1,)))
    return frames


def _sse(chunks: list[dict[str, Any]]) -> str:
    return "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"


def _chat_stream(frames: list[dict[str, Any]], texts: list[str], completion_tokens: int) -> str:
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": "fake"}
    chunks = [head | {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                   "finish_reason": None}]}]
    for f, text in zip(frames, texts, strict=True):
        delta = {"content": text} if text else {}
        chunks.append(head | {"choices": [{"index": 0, "delta": delta, "finish_reason": None,
                                           "canvas": f}]})
    chunks.append(head | {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})
    chunks.append(head | {"choices": [], "usage": {"prompt_tokens": 30, "total_tokens": 30
                                                   + completion_tokens,
                                                   "completion_tokens": completion_tokens}})
    return _sse(chunks)


def _serve_fake(page: Page, api: Any) -> list[dict[str, Any]]:
    """The page's own files from the checkout, `api(path, body)` -> (status, content type,
    text) for the rest; returns the request bodies the page sent."""
    sent: list[dict[str, Any]] = []

    def handle(route: Any) -> None:
        path = route.request.url.removeprefix(FAKE)
        if path == "/playground":
            html = (STATIC / "playground.html").read_text()
            route.fulfill(body=html.replace("<body>", '<body data-key-required="false">'),
                          content_type="text/html")
        elif path.startswith("/playground/"):
            route.fulfill(path=str(STATIC / path.removeprefix("/playground/")))
        elif path == "/v1/models":
            route.fulfill(json={"object": "list", "data": [{"id": "fake", "object": "model"}]})
        else:
            body = json.loads(route.request.post_data or "{}")
            sent.append(body)
            status, ctype, text = api(path, body)
            route.fulfill(status=status, content_type=ctype, body=text)

    page.page.route(FAKE + "/**", handle)
    page.page.goto(FAKE + "/playground")
    page.page.wait_for_selector("body[data-ready=true]", state="attached")
    return sent


def test_page_draws_hand_written_frames(page: Page) -> None:
    frames = _fake_frames()
    texts = ["t7", "t8", "", "", "t1t9t3" + "t4" * 29]
    sent = _serve_fake(page, lambda path, body: (
        200, "text/event-stream", _chat_stream(frames, texts, 20)))
    page.page.select_option("#preset", "speed")
    page.page.fill("#max-tokens", "20")
    page.page.click("details summary")
    page.page.select_option("#pace", "120")  # drawn 120 ms apart: the same renders
    snap = page.generate()

    body = sent[0]
    assert body["stream_options"] == {"include_usage": True, "include_canvas": True}
    assert (body["threshold"], body["editing_threshold"], body["max_post_steps"]) == (0.5, 0, 16)
    assert body["model"] == "fake" and body["max_tokens"] == 20 and body["temperature"] == 0
    assert "messages" in body and "prompt" not in body

    assert snap["text"] == "".join(texts) == page.page.inner_text("#output")
    assert snap["forwards"] == 5 and page.page.inner_text("#stat-forwards") == "5"
    assert page.page.inner_text("#stat-tpf") == "4.00"  # 20 output tokens in 5 forwards
    renders = [(r["masked"], r["committed"]) for r in snap["renders"]]
    assert renders == [(1, 1), (0, 2), (29, 5), (0, 34), (0, 34)]  # the DOM after each frame
    assert snap["renders"][-1]["edited"] == 1
    assert page.count(".block") == 2 and page.count(".cell.prompt") == 30
    assert page.count(".cell.edited") == 1 and page.count(".cell.mask") == 0
    edited = page.page.locator(".block").nth(1).locator(".cell").nth(1)
    assert edited.inner_text() == "t9" and "edited 1×" in (edited.get_attribute("title") or "")
    # output ends at prompt 30 + 20 tokens: the rest of the last block was decoded, then cut
    assert page.count(".cell.beyond") == 64 - 50

    page.scrub(3)  # back to block @32's first frame
    assert page.count(".cell.mask") == 29 and page.count(".cell.fresh") == 3
    assert "frame 3 of 5" in page.page.inner_text("#scrub-label")
    page.page.select_option("#colour", "confidence")
    assert page.count(".cell.gen") == 5
    assert not page.errors, page.errors


def test_autoregressive_server_gets_text_only(page: Page) -> None:
    """The 400 for include_canvas marks the model autoregressive: the page asks again without
    the extension and its diffusion parameters, shows text, and counts one forward a token."""
    def api(path: str, body: dict[str, Any]) -> tuple[int, str, str]:
        if body["stream_options"].get("include_canvas"):
            return 400, "application/json", json.dumps({"error": {
                "message": "include_canvas needs diffusion", "type": "BadRequestError",
                "param": "stream_options.include_canvas", "code": 400}})
        head = {"id": "cmpl-1", "object": "text_completion", "created": 0, "model": "fake"}
        return 200, "text/event-stream", _sse([
            head | {"choices": [{"index": 0, "text": "abc", "finish_reason": None}]},
            head | {"choices": [{"index": 0, "text": "", "finish_reason": "length"}]},
            head | {"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 3,
                                             "total_tokens": 5}}])

    sent = _serve_fake(page, api)
    page.page.check("input[name=mode][value=completion]")
    page.page.select_option("#preset", "quality")
    snap = page.generate()
    assert [("include_canvas" in b["stream_options"], "threshold" in b) for b in sent] == [
        (True, True), (False, False)]
    assert sent[1]["prompt"] and "messages" not in sent[1]
    assert snap["text"] == "abc" and snap["diffusion"] is False and snap["forwards"] == 3
    assert page.page.locator(".diffusion-only").is_hidden()
    assert page.count(".block") == 0
    # the browser reports the refused first request itself; nothing else
    assert [e for e in page.errors if "400" not in e] == []


# ------------------------------------------------------------------ live


def _open(page: Page, srv: RemoteServer) -> None:
    """From `/` through its link, the API key typed in, the model listed."""
    page.page.set_default_timeout(WAIT_MS)  # the machine may be busy with a server's forwards
    page.page.goto(srv.url + "/")
    page.page.click("a[href='playground']")
    page.page.wait_for_function("document.getElementById('model-info').textContent"
                                ".includes('API key')")
    page.page.fill("#api-key", srv.api_key or "")
    page.page.press("#api-key", "Tab")  # `change`: the page lists the models
    page.page.wait_for_selector("body[data-ready=true]", state="attached", timeout=WAIT_MS)


def _check_run(page: Page, srv: RemoteServer) -> dict[str, Any]:
    before = srv.metric("unmask:denoise_steps_total", 0)
    snap = page.generate()
    steps = int(srv.metric("unmask:denoise_steps_total") - before)  # it ran nothing else

    body = {k: v for k, v in snap["body"].items() if k not in ("stream", "stream_options")}
    path = "/v1/chat/completions" if snap["chat"] else "/v1/completions"
    plain = httpx.post(srv.url + path, json=body, timeout=WAIT_MS / 1000,
                       headers={"Authorization": f"Bearer {API_KEY}"}).json()
    choice = plain["choices"][0]
    want = choice["message"]["content"] if snap["chat"] else choice["text"]
    assert snap["text"] == want == page.page.text_content("#output")
    assert snap["usage"]["completion_tokens"] == plain["usage"]["completion_tokens"]

    assert snap["forwards"] == steps > 0
    assert page.page.inner_text("#stat-forwards") == str(steps)
    assert snap["frames"] == steps  # one frame a forward
    assert any(r["masked"] > 0 and r["committed"] > 1 for r in snap["renders"]), \
        snap["renders"]
    assert page.count(".cell.mask") == 0 and page.count(".block") >= 2
    assert not page.errors, page.errors
    return snap


def test_live_tiny_checkpoint(page: Page, tiny_llada2_peaky: Path) -> None:
    srv = RemoteServer(tiny_llada2_peaky, "--num-pages", "256")
    try:
        _open(page, srv)
        page.page.check("input[name=mode][value=completion]")
        page.page.fill("#prompt", "the quick brown fox")
        page.page.select_option("#preset", "quality")  # editing on
        page.page.fill("#max-tokens", "80")
        page.page.check("#ignore-eos")
        snap = _check_run(page, srv)
        assert snap["body"]["editing_threshold"] == 0.5 and snap["body"]["ignore_eos"] is True
        assert snap["model"] == "tiny" and snap["diffusion"] is True
    finally:
        srv.stop()


def test_live_shipped_pair(page: Page, tmp_path: Path) -> None:
    """The shipped LLaDA2 in chat mode beside its AR twin (another server, CORS allowing the
    page's origin); the screenshot of this run is the one docs/ shows."""
    srv = RemoteServer(None, "--num-pages", "256", name=None)
    twin = RemoteServer(LING2, "--num-pages", "256", "--cors-origins", srv.url, api_key=None)
    try:
        _open(page, srv)
        page.page.fill("#max-tokens", "96")
        page.page.click("details summary")
        page.page.fill("#compare-url", twin.url)
        snap = _check_run(page, srv)
        assert "def is_palindrome" in snap["text"]
        ar = snap["compare"]
        assert ar["error"] is None and "def is_palindrome" in ar["text"], ar
        assert ar["usage"]["completion_tokens"] > snap["forwards"]  # diffusion used fewer
        assert f"{ar['usage']['completion_tokens']} forwards" in page.page.inner_text(
            "#compare-stats")

        page.page.click("details summary")  # folded again for the picture
        page.scrub(max((r["masked"], r["frame"]) for r in snap["renders"]
                       if r["committed"] > 1)[1])  # masked cells beside decided ones
        page.page.screenshot(path=str(tmp_path / "playground.png"))
        if os.environ.get("UNMASK_UPDATE_SCREENSHOT") == "1":
            SCREENSHOT.parent.mkdir(exist_ok=True)
            shutil.copyfile(tmp_path / "playground.png", SCREENSHOT)
    finally:
        twin.stop()
        srv.stop()
