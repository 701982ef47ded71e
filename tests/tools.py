"""Outside programs some tests drive: Prometheus's Pushgateway and promtool, headless Chromium.

They are Debian packages that ``.ci/run`` installs (``prometheus``, ``prometheus-pushgateway``,
``chromium-headless-shell``). Without them a test is skipped with the command that installs
them, except under ``WIDEN_REQUIRE_TOOLS=1`` (set by ``.ci/run``), where a missing tool fails.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator

import pytest

PACKAGES = {"prometheus-pushgateway": "prometheus-pushgateway", "promtool": "prometheus",
            "chromium-headless-shell": "chromium-headless-shell"}


def require(program: str) -> str:
    path = shutil.which(program)
    if path:
        return path
    why = f"{program} is not installed (apt-get install {PACKAGES[program]}; .ci/run installs it)"
    if os.environ.get("WIDEN_REQUIRE_TOOLS"):
        pytest.fail(why)
    pytest.skip(why)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def pushgateway() -> Iterator[str]:
    """A real Pushgateway on a free local port; yields its address (host:port)."""
    program = require("prometheus-pushgateway")
    port = free_port()
    proc = subprocess.Popen([program, f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://{address}/-/ready", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the Pushgateway did not start on {address}") from None
                time.sleep(0.1)
        yield address
    finally:
        proc.terminate()
        proc.wait(timeout=10)


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


def chromium(url: str, workdir: str, *flags: str, timeout: float = 60) -> str:
    """Run headless Chromium on ``url`` with ``flags`` (e.g. --dump-dom, --screenshot=…); its stdout."""
    program = require("chromium-headless-shell")
    profile = os.path.join(workdir, "chromium-profile")
    done = subprocess.run([program, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *flags, url],
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout
