"""The web chat page in real headless Chromium: it loads offline (nothing but the server is
reachable), shows the model's provenance, sends a typed message, renders the streamed reply,
stops a long reply with the stop button, switches language, and a screenshot is saved
(target/web-chat.png).

Chromium is driven over the DevTools protocol on a pipe (--remote-debugging-pipe: JSON
messages separated by NUL bytes on file descriptors 3 and 4), which needs no Python package
and no browser download. Needs Debian's `chromium` (installed by .ci/run).
"""

import base64
import fcntl
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from serve_helpers import Server, tiny_model

ROOT = Path(__file__).resolve().parents[2]


def chromium_binary():
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome", "chrome-headless-shell"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI"):
        pytest.fail("no chromium binary in CI: .ci/run should have installed it (apt-get install chromium)")
    pytest.skip("no chromium binary found: install Debian's `chromium` to run the web chat test")


class Browser:
    """Headless Chromium with one page, driven over the DevTools pipe."""

    def __init__(self, binary, profile):
        to_chrome_r, to_chrome_w = os.pipe()
        from_chrome_r, from_chrome_w = os.pipe()
        # Moved above the low descriptors so that placing them at 3 and 4 cannot clobber them.
        hi_r = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD_CLOEXEC, 100)
        hi_w = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD_CLOEXEC, 100)
        os.close(to_chrome_r)
        os.close(from_chrome_w)

        def child_fds():
            os.dup2(hi_r, 3)  # the browser reads commands from fd 3
            os.dup2(hi_w, 4)  # and writes replies and events to fd 4

        args = [
            binary,
            "--headless",
            "--remote-debugging-pipe",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            f"--user-data-dir={profile}",
            "--window-size=1280,800",
            "about:blank",
        ]
        if os.geteuid() == 0:
            args.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
        self.proc = subprocess.Popen(
            args, preexec_fn=child_fds, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        os.close(hi_r)
        os.close(hi_w)
        self.w = os.fdopen(to_chrome_w, "wb", buffering=0)
        self.r = os.fdopen(from_chrome_r, "rb", buffering=0)
        self.buf = b""
        self.next_id = 0
        self.session = None
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Page.enable")
        self.call("Page.bringToFront")  # a background tab gets its input and frames late
        self.call("Runtime.enable")

    def call(self, method, **params):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            msg["sessionId"] = self.session
        self.w.write(json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def _read(self):
        while b"\0" not in self.buf:
            chunk = self.r.read(1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def js(self, expression):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait(self, expression, what, timeout=30):
        end = time.time() + timeout
        while time.time() < end:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}")

    def click(self, selector):
        """A real mouse click at the centre of the element."""
        box = self.js(
            f"(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def type(self, selector, text):
        self.click(selector)
        self.call("Input.insertText", text=text)

    def close(self):
        try:
            self.call("Browser.close")
        except RuntimeError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def metrics_line(url, name, value):
    """The line of /metrics for `name` if its value is `value`, else ''."""
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    return next((l for l in text.splitlines() if l.startswith(name + "{") and l.endswith(" " + value)), "")


LAST_REPLY = "document.querySelector('#messages .msg.assistant:last-of-type')"


def test_web_chat_streams_a_reply_and_shows_provenance(tmp_path):
    binary = chromium_binary()
    model = tiny_model(tmp_path / "model")
    with Server(model, "--served-model-name", "jarip-tiny") as server:
        browser = Browser(binary, tmp_path / "profile")
        try:
            browser.call("Page.navigate", url=server.url + "/")
            browser.wait("document.readyState === 'complete'", "the page to load")
            # The provenance panel, filled from /info.
            browser.wait("document.getElementById('model-name').textContent === 'jarip-tiny'", "the model's name")
            # The interface follows the browser's language; start from Korean.
            if browser.js("document.documentElement.lang") != "ko":
                browser.click("#lang")
            assert browser.js("document.getElementById('new-chat').textContent") == "새 대화"
            panel = browser.js("document.getElementById('provenance').innerText")
            assert "jarip으로 처음부터 학습된 모델" in panel, panel
            assert "시드\n42" in panel, panel  # the pretraining seed (jarip pretrain's default)
            assert "해시 체인 온전함" in panel and "토크나이저 SHA-256" in panel, panel

            # Sampling settings as a user sets them, then a message typed and sent.
            browser.js("document.getElementById('seed').value = '7'; document.getElementById('max_tokens').value = '24'")
            browser.type("#input", "대한민국의 주권은 누구에게 있나요?")
            browser.click("#send")
            browser.wait(f"{LAST_REPLY} && {LAST_REPLY}.dataset.state === 'done'", "the streamed reply")
            reply = browser.js(f"{LAST_REPLY}.firstChild.textContent")
            chunks = int(browser.js(f"{LAST_REPLY}.dataset.chunks"))
            meta = browser.js(f"{LAST_REPLY}.querySelector('.meta').textContent")
            assert chunks >= 1 and reply.strip(), (reply, meta)
            assert "토큰" in meta, meta
            assert browser.js("document.querySelectorAll('#messages .msg.user').length") == 1
            # The conversation is in the history list.
            assert "대한민국의 주권은" in browser.js("document.getElementById('conversations').innerText")

            # Language switch, then the screenshot of the finished exchange.
            browser.click("#lang")
            assert browser.js("document.getElementById('new-chat').textContent") == "New chat"
            shot = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
            assert shot[:8] == b"\x89PNG\r\n\x1a\n"
            (tmp_path / "web-chat.png").write_bytes(shot)
            target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
            if target.is_dir():
                (target / "web-chat.png").write_bytes(shot)

            # A long reply, stopped with the stop button while it streams (the page stays
            # responsive however fast tokens come). A tiny model may end its turn early on its
            # own, so its requests are made to ignore end-of-turn tokens.
            browser.js(
                "const f = window.fetch; window.fetch = (url, init) => {"
                " const body = JSON.parse(init.body); body.ignore_eos = true;"
                " return f(url, Object.assign({}, init, {body: JSON.stringify(body)})); }"
            )
            browser.js("document.getElementById('max_tokens').value = '100000'")
            # A slow network (as DevTools throttles it), so the reply is still streaming when
            # the button is pressed, however fast the server is.
            browser.type("#input", "tell me everything")
            browser.click("#send")
            browser.wait(f"Number({LAST_REPLY}.dataset.chunks) >= 3", "the long reply to start streaming")
            browser.js("window.stops = 0; document.getElementById('stop').addEventListener('click', () => window.stops++)")
            browser.click("#stop")
            browser.wait(f"{LAST_REPLY}.dataset.state === 'done'", "the reply to stop")
            meta = browser.js(f"{LAST_REPLY}.querySelector('.meta').textContent")
            assert meta == "stopped", (meta, "stop clicks seen by the page:", browser.js("window.stops"))
            assert not browser.js("document.getElementById('send').disabled")
            # Stopping closed the connection, and the server cancelled the generation.
            deadline = time.time() + 30
            while "jarip:request_cancelled_total{" not in metrics_line(server.url, "jarip:request_cancelled_total", "1"):
                assert time.time() < deadline, "the stopped reply was not cancelled on the server"
                time.sleep(0.05)
        finally:
            browser.close()
