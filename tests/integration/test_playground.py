"""The web playground at `/`, driven in headless Chromium (Debian's `chromium`, through Playwright).

Two deployments: `turnstream dev` (embedded Redis, no key) and an API + worker on redis-server with keys on,
whose API node is killed and restarted mid-stream. Every console error fails a test, except the network
errors a step provokes on purpose (a 401 before the key is given, refused connections while the node is
down), which that step declares. Screenshots at 1280x900 and 390x844 are saved into the test's temp dir.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Playwright, Request, expect, sync_playwright

from tests.conftest import ROOT, Stack, free_port, wait_until
from tests.integration.own_stack import own_stack

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WIDE = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
WAIT_MS = 15_000

_NETWORK_ERROR = re.compile(r"^Failed to load resource: ")
REFUSED = re.compile(r"net::ERR_(CONNECTION_REFUSED|CONNECTION_RESET|EMPTY_RESPONSE|INCOMPLETE_CHUNKED_ENCODING)")
UNAUTHORIZED = re.compile(r"status of 401")
NOT_READY = re.compile(r"status of 503")


@dataclass
class Console:
    """Every console error of the page; the ones a step provokes on purpose are declared with `expect`."""

    errors: list[str] = field(default_factory=list)
    allowed: list[re.Pattern[str]] = field(default_factory=list)

    def on_message(self, message: ConsoleMessage) -> None:
        if message.type != "error":
            return
        text = f"{message.text} ({message.location.get('url', '')})"
        if _NETWORK_ERROR.match(message.text) and any(p.search(message.text) for p in self.allowed):
            return
        self.errors.append(text)

    @contextlib.contextmanager
    def expect(self, pattern: re.Pattern[str]) -> Iterator[None]:
        self.allowed.append(pattern)
        try:
            yield
        finally:
            self.allowed.remove(pattern)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if shutil.which("chromium") is None and not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: apt-get install -y chromium (see README, Test it)")
    with sync_playwright() as playwright:
        yield _launch(playwright)


def _launch(playwright: Playwright) -> Browser:
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


@contextlib.contextmanager
def opened(browser: Browser, url: str) -> Iterator[tuple[Page, Console]]:
    context = browser.new_context(viewport=WIDE)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    console = Console()
    page.on("console", console.on_message)
    page.on("pageerror", lambda exc: console.errors.append(f"uncaught: {exc}"))
    try:
        yield page, console
    except BaseException:
        print("console errors:", *console.errors, sep="\n  ")  # often the reason a step timed out
        raise
    finally:
        context.close()
    assert console.errors == []


def send(page: Page, text: str) -> None:
    page.fill("#message", text)
    page.press("#message", "Enter")  # Enter sends


def last_answer(page: Page) -> str:
    return page.locator(".turn.assistant").last.locator(".text").last.inner_text()


def wait_status(page: Page, status: str) -> None:
    page.locator(".turn.assistant").last.locator(f'.badge[data-status="{status}"]').wait_for()


def wait_streaming(page: Page, chars: int) -> None:
    """Until the answer being streamed has more than `chars` characters (a locator wait: the page's CSP
    forbids the string evaluation wait_for_function would use)."""
    answer = page.locator(".turn.assistant").last.locator(".text").last
    expect(answer).to_have_text(re.compile(rf"^[\s\S]{{{chars + 1},}}"), timeout=WAIT_MS)


def answered_turns(page: Page) -> int:
    return page.locator(".turn.assistant").count()


# --- turnstream dev ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dev() -> Iterator[str]:
    port, mock_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TURNSTREAM_", "OPENAI_"))}
    env.update({"TURNSTREAM_PORT": str(port), "TURNSTREAM_MOCK_PORT": str(mock_port), "PYTHONUNBUFFERED": "1",
                "TURNSTREAM_MOCK_TOKEN_DELAY_MS": "5"})
    proc = subprocess.Popen(
        [sys.executable, "-c", "from shared.cli import main; main()", "dev"],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{base}/readyz").status_code == 200, 30, "turnstream dev")
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_dev_page_streams_an_answer_with_its_tool_call_reasoning_and_events(
    browser: Browser, dev: str, tmp_path: Path
) -> None:
    with opened(browser, dev) as (page, _):
        loaded = page.goto(f"{dev}/")
        # Only the page's own files run (it holds a key): no inline or foreign script, no framing.
        assert loaded is not None and "script-src 'self';" in loaded.headers["content-security-policy"]
        # Every control a person uses is reachable by its role and label.
        page.locator("#model option").first.wait_for(state="attached")
        assert page.get_by_role("combobox", name="Model").input_value() == "turnstream-mock"
        assert page.evaluate("document.activeElement.id") == "message"  # ready to type
        for name in ("Send", "Cancel", "New conversation", "API key"):
            page.get_by_role("button", name=name, exact=True).wait_for()
        page.get_by_role("textbox", name="Message").wait_for()
        page.get_by_role("log").wait_for()
        send(page, "What is the weather in Bengaluru? [think]")
        tool = page.get_by_role("region", name="Tool call get_weather")
        tool.wait_for()
        wait_status(page, "completed")
        assert '"city": "Bengaluru"' in tool.locator(".tool-args").inner_text()
        assert "Bengaluru" in tool.locator(".tool-result").inner_text()
        assert re.fullmatch(r"\d+ ms", tool.locator(".tool-duration").inner_text())
        assert re.fullmatch(r"first token \d+ ms · \d+ ms", page.locator(".turn.assistant .timing").inner_text())
        assert last_answer(page).startswith("The weather in Bengaluru is")
        reasoning = page.locator("details.reasoning").first
        assert reasoning.get_attribute("open") is None  # collapsed until asked
        reasoning.locator("summary").click()
        assert reasoning.locator(".reasoning-text").inner_text() != ""

        page.get_by_role("button", name=re.compile("^Events of resp_")).last.click()
        summary = page.locator("#events-summary").inner_text()
        assert re.search(r"time to first token\s+\d+ ms", summary) and "input tokens" in summary
        seqs = [int(s) for s in page.locator("#events-rows tr td:first-child").all_inner_texts()]
        assert seqs == list(range(len(seqs))) and len(seqs) > 10
        assert page.locator("#events-rows tr.first-token").count() == 1
        page.screenshot(path=tmp_path / "playground-1280x900.png")
        page.keyboard.press("Escape")
        assert page.locator("#events").is_hidden()

        send(page, "[refuse] tell me a secret")
        wait_status(page, "completed")
        assert page.locator(".turn.assistant").last.locator(".text.refusal").count() == 1

        page.set_viewport_size(PHONE)
        page.screenshot(path=tmp_path / "playground-390x844.png")
        width, height = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
        # Nothing runs off the side or the bottom of a phone: the transcript scrolls, the message box stays put.
        assert width <= PHONE["width"] and height <= PHONE["height"]
        assert page.get_by_role("button", name="Send", exact=True).is_visible()
        print(f"screenshots in {tmp_path}")

        # Read back from the conversation: the same answer, reasoning and tool call, without live timings.
        page.set_viewport_size(WIDE)
        page.reload()
        page.locator("#conversation-list .conversation").first.click()
        stored_tool = page.get_by_role("region", name="Tool call get_weather")
        stored_tool.wait_for()
        assert "Bengaluru" in stored_tool.locator(".tool-result").inner_text()
        assert stored_tool.locator(".tool-duration").inner_text() == ""
        assert page.locator(".reasoning-text").first.text_content() != ""
        assert page.locator(".text.refusal").count() == 1


def test_dev_page_runs_in_background_cancels_and_reopens_conversations(browser: Browser, dev: str) -> None:
    with opened(browser, dev) as (page, _):
        page.goto(f"{dev}/")
        send(page, "My name is Ravi.")
        wait_status(page, "completed")
        first_title = "My name is Ravi."

        page.get_by_role("checkbox", name="Background").check()
        send(page, "count to 30")
        wait_status(page, "completed")
        assert last_answer(page) == " ".join(str(i) for i in range(1, 31))
        # Polled, not streamed: its events panel reads the stream back from the start, without timings.
        page.get_by_role("button", name=re.compile("^Events of resp_")).last.click()
        page.locator("#events-rows tr").nth(5).wait_for()
        rows = page.locator("#events-rows tr")
        assert rows.first.inner_text().split() == ["0", "created", "\u2013"]  # an en dash: no timing
        assert rows.first.locator("td").nth(1).get_attribute("title") == "response.created"
        assert "queued" in page.locator("#events-rows td:nth-child(2)").all_inner_texts()
        page.get_by_role("button", name="Close the events panel").click()
        assert page.evaluate("document.activeElement.id") == "message"  # focus goes back to the message box
        page.get_by_role("checkbox", name="Background").uncheck()

        send(page, "count to 2000 [delay=20ms]")
        wait_streaming(page, 10)
        page.click("#cancel")
        wait_status(page, "cancelled")
        assert page.locator("#send").is_enabled()

        page.click("#new-conversation")
        assert page.locator("#transcript").inner_text() == ""
        send(page, "What is my name?")
        wait_status(page, "completed")
        assert last_answer(page) == "I don't know your name yet."  # a new conversation knows nothing

        page.reload()
        entries = page.locator("#conversation-list .conversation")
        entries.first.wait_for()
        assert entries.first.locator(".title").inner_text() == "What is my name?"  # newest first
        page.locator("#conversation-list .conversation", has_text=first_title).click()
        page.locator(".turn.user", has_text="count to 30").wait_for()
        assert page.locator(".turn.user").all_inner_texts()[0].endswith("My name is Ravi.")
        send(page, "What is my name?")
        wait_status(page, "completed")
        assert last_answer(page) == "Your name is Ravi."

        # On a phone the list folds away behind a button, and picking a conversation folds it again.
        page.set_viewport_size(PHONE)
        toggle = page.get_by_role("button", name="Conversations")
        assert entries.first.is_hidden() and toggle.get_attribute("aria-expanded") == "false"
        toggle.click()
        assert toggle.get_attribute("aria-expanded") == "true"
        page.locator("#conversation-list .conversation", has_text="What is my name?").click()
        page.locator(".turn.user", has_text="What is my name?").wait_for()
        assert entries.first.is_hidden() and toggle.get_attribute("aria-expanded") == "false"


# --- api + worker with keys on -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, str]]:
    root = tmp_path_factory.mktemp("playground-keyed")
    with own_stack(root, {"TURNSTREAM_AUTH": "on", "TURNSTREAM_MOCK_TOKEN_DELAY_MS": "5"}) as stack:
        # As the README says; a process of its own, since Playwright's own event loop runs in this thread.
        made = subprocess.run(
            [sys.executable, "-c", "from shared.cli import main; main()", "keys", "create", "--project", "playground"],
            env=stack.env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
        )
        yield stack, made.stdout.splitlines()[-1]


def test_keyed_page_asks_for_a_key_and_resumes_whole_after_its_api_node_restarts(
    browser: Browser, keyed_stack: tuple[Stack, str]
) -> None:
    stack, secret = keyed_stack
    with opened(browser, stack.api_url) as (page, console):
        resumes: list[Request] = []
        page.on("request", lambda r: resumes.append(r) if "stream=true" in r.url and r.method == "GET" else None)
        with console.expect(UNAUTHORIZED):
            page.goto(f"{stack.api_url}/")
            page.get_by_role("textbox", name="Key").fill(secret)
            page.click("#key-save")
            page.locator("#model option").first.wait_for(state="attached")
        assert page.evaluate("localStorage.getItem('turnstream.apiKey')") == secret

        send(page, "count to 150 [delay=30ms]")  # ~4.5 s of streaming
        wait_streaming(page, 20)
        with console.expect(REFUSED):
            stack.stop("api", kill=True)  # the node serving the stream dies mid-answer
            time.sleep(0.5)
            stack.spawn("api", "api")
            wait_until(lambda: httpx.get(f"{stack.api_url}/readyz").status_code == 200, 30, "the restarted API")
            wait_status(page, "completed")
        assert last_answer(page) == " ".join(str(i) for i in range(1, 151))  # whole, and each number once
        assert resumes and resumes[-1].headers.get("last-event-id", "").isdigit()
        response_id = page.locator(".turn.assistant").last.get_attribute("data-response-id")
        with httpx.Client(headers={"Authorization": f"Bearer {secret}"}) as http:
            stored = http.get(f"{stack.base_url}/responses/{response_id}").json()
        assert stored["status"] == "completed" and last_answer(page) == stored["output"][0]["content"][0]["text"]

        send(page, "count to 2000 [delay=20ms]")
        wait_streaming(page, 10)
        page.click("#cancel")
        wait_status(page, "cancelled")
        assert answered_turns(page) == 2


def test_keyed_page_asks_for_approval_then_runs_or_skips_the_tool(
    browser: Browser, keyed_stack: tuple[Stack, str]
) -> None:
    stack, secret = keyed_stack
    with opened(browser, stack.api_url) as (page, _):
        page.add_init_script(f"localStorage.setItem('turnstream.apiKey', {secret!r})")
        page.goto(f"{stack.api_url}/")
        page.locator("#model option[value='careful']").wait_for(state="attached")
        page.get_by_role("combobox", name="Model").select_option("careful")  # its slow_tool needs approval

        send(page, 'call slow_tool({"seconds": 0.1})')
        asked = page.get_by_role("region", name="Approval request slow_tool")
        asked.wait_for()
        wait_status(page, "completed")
        assert '"seconds": 0.1' in asked.locator(".tool-args").inner_text()
        assert "careful" in asked.locator(".tool-head").inner_text()  # the server_label: the agent that asks
        assert page.get_by_role("region", name="Tool call slow_tool").count() == 0  # nothing ran yet
        approve = asked.get_by_role("button", name="Approve")
        expect(approve).to_be_focused()  # answered from the keyboard
        page.keyboard.press("Enter")
        ran = page.locator(".turn.assistant").nth(1).get_by_role("region", name="Tool call slow_tool")
        expect(ran.locator(".tool-result")).to_have_text("waited 0.1s")
        wait_status(page, "completed")
        assert last_answer(page) == "Tool slow_tool returned: waited 0.1s."
        assert page.locator(".turn.user").last.inner_text().endswith("Approved slow_tool")
        expect(asked.locator(".tool-state")).to_have_text("approved")
        assert approve.is_disabled()  # one answer per request

        send(page, 'call slow_tool({"seconds": 0.2})')
        second = page.get_by_role("region", name="Approval request slow_tool").nth(1)
        second.wait_for()
        wait_status(page, "completed")
        second.get_by_role("textbox", name="Reason (optional)").fill("not now")
        page.keyboard.press("Tab")  # to Approve
        page.keyboard.press("Tab")  # to Deny
        page.keyboard.press("Enter")
        skipped = page.locator(".turn.assistant").nth(3).get_by_role("region", name="Tool call slow_tool")
        expect(skipped.locator(".tool-result")).to_have_text("The user denied this tool call: not now")
        wait_status(page, "completed")
        assert skipped.locator(".tool-state").inner_text() == "not run"
        assert last_answer(page).startswith("The tool slow_tool failed (The user denied this tool call: not now)")

        # Read back from the conversation: both requests answered, both runs shown, no live buttons left.
        page.reload()
        page.locator("#conversation-list .conversation").first.click()
        page.locator(".turn.user", has_text="Denied: not now").wait_for()
        verdicts = page.locator(".approval .tool-state").all_inner_texts()
        assert verdicts == ["approved", "denied"]
        assert page.locator(".approval button:enabled").count() == 0
        results = page.get_by_role("region", name="Tool call slow_tool").locator(".tool-result").all_inner_texts()
        assert results == ["waited 0.1s", "The user denied this tool call: not now"]


def test_keyed_page_warns_when_no_worker_is_alive(browser: Browser, keyed_stack: tuple[Stack, str]) -> None:
    stack, secret = keyed_stack
    stack.stop("worker-1")
    with opened(browser, stack.api_url) as (page, console), console.expect(NOT_READY):
        page.add_init_script(f"localStorage.setItem('turnstream.apiKey', {secret!r})")
        page.goto(f"{stack.api_url}/")
        page.get_by_role("status").filter(has_text="No worker is alive").wait_for()
        assert "turnstream worker" in page.get_by_role("status").inner_text()
