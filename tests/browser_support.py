"""Headless Debian chromium for the browser tests (playwright drives it; no network).

``playwright install`` cannot download browser builds here, so we drive the distribution's
``/usr/bin/chromium``. On a fresh machine where it is missing, ``ensure_chromium`` installs it
with apt-get (the CI user is root); elsewhere the browser tests are skipped with the command
to run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
]


def ensure_chromium() -> str:
    """Path of a chromium binary, installing Debian's package when it is missing."""
    if os.path.exists(CHROMIUM):
        return CHROMIUM
    apt = shutil.which("apt-get")
    if apt and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run([apt, "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
        subprocess.run([apt, "install", "-y", "-q", "--no-install-recommends", "chromium",
                        "fonts-dejavu-core"], check=True, env=env, stdout=subprocess.DEVNULL)
    if os.path.exists(CHROMIUM):
        return CHROMIUM
    message = "chromium is missing: run `apt-get install -y chromium` (as root)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@dataclass
class OfflinePage:
    """A playwright page whose every non-file request is aborted and recorded."""

    page: object
    console_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    network_attempts: list[str] = field(default_factory=list)

    def assert_clean(self) -> None:
        assert self.console_errors == [], self.console_errors
        assert self.failed_requests == [], self.failed_requests
        assert self.network_attempts == [], self.network_attempts


class Browser:
    """One persistent chromium context with a fresh user-data-dir, networking disabled."""

    def __init__(self, user_data_dir: Path, *, offline: bool = True) -> None:
        """``offline=False``: the context may reach localhost (a test's own server); such a test
        routes every request itself."""
        from playwright.sync_api import sync_playwright

        executable = ensure_chromium()
        self._pw = sync_playwright().start()
        self.context = self._pw.chromium.launch_persistent_context(
            str(user_data_dir),
            executable_path=executable,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
            offline=offline,
        )

    def open(self, path: Path) -> OfflinePage:
        page = self.context.new_page()
        result = OfflinePage(page)

        def route(r) -> None:
            url = r.request.url
            if url.startswith(("file:", "data:", "blob:")):
                r.continue_()
            else:
                result.network_attempts.append(url)
                r.abort()

        page.route("**/*", route)
        page.on("console", lambda m: result.console_errors.append(m.text)
                if m.type == "error" else None)
        page.on("pageerror", lambda e: result.console_errors.append(str(e)))
        page.on("requestfailed", lambda r: result.failed_requests.append(r.url))
        page.goto(Path(path).resolve().as_uri())
        return result

    def close(self) -> None:
        self.context.close()
        self._pw.stop()
