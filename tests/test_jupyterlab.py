"""The tutorial in a real JupyterLab, in a real browser (headless Debian chromium via playwright).

The test starts JupyterLab on 127.0.0.1 (a free port, no token, its own config, data and runtime
folders under tmp, a copy of the tutorial as its only file), runs every cell from the browser,
and checks that the inline explorer draws its lines and switches layers and heads, that nothing
logged a console error, and that the browser asked for nothing outside localhost. It saves a
screenshot of the explorer inside JupyterLab (``ATTNKIT_SCREENSHOT=docs/jupyterlab.png`` writes
the README's copy).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest
from browser_support import Browser

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / "docs" / "tutorial.ipynb"
LOCAL = {"127.0.0.1", "localhost"}
KERNEL_IDLE = """() => { const w = window.jupyterapp.shell.currentWidget;
  const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
  return k && k.status === 'idle'; }"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server serving a copy of the tutorial; stopped (and its kernels) at the end."""
    pytest.importorskip("jupyterlab")
    home = tmp_path_factory.mktemp("jupyter")
    root = home / "root"
    root.mkdir()
    shutil.copy(TUTORIAL, root / TUTORIAL.name)
    # no news prompt, no update check; every cell rendered (not only those in view)
    settings = home / "config" / "lab" / "user-settings" / "@jupyterlab"
    for name, values in {"apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
                         "notebook-extension/tracker": {"windowingMode": "none"}}.items():
        (settings / name).parent.mkdir(parents=True, exist_ok=True)
        (settings / f"{name}.jupyterlab-settings").write_text(json.dumps(values))
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_DATA_DIR": str(home / "data"),
           "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "IPYTHONDIR": str(home / "ipython"),
           "HF_HUB_OFFLINE": "1", "JUPYTER_PLATFORM_DIRS": "1"}
    port = free_port()
    log = (home / "lab.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         "--ServerApp.port_retries=0", "--IdentityProvider.token=", "--ServerApp.password=",
         "--ServerApp.disable_check_xsrf=True", f"--ServerApp.root_dir={root}",
         "--allow-root", "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None",
         "--LabApp.extension_manager=readonly",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not start:\n{(home / 'lab.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_tutorial_runs_in_jupyterlab_and_its_explorer_works(lab, tmp_path) -> None:
    browser = Browser(tmp_path / "chromium-profile", offline=False)
    errors: list[str] = []
    outside: list[str] = []
    try:
        page = browser.context.new_page()

        def route(r) -> None:
            url = r.request.url
            if url.startswith(("data:", "blob:", "about:")) or urlparse(url).hostname in LOCAL:
                r.continue_()
            else:
                outside.append(url)
                r.abort()

        page.route("**/*", route)
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{lab}/lab/tree/{TUTORIAL.name}")
        page.wait_for_function("window.jupyterapp && document.querySelector('.jp-Notebook')", timeout=120_000)
        page.wait_for_function(KERNEL_IDLE, timeout=120_000)
        page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
        code_cells = page.locator(".jp-Notebook .jp-CodeCell").count()
        assert code_cells >= 10
        # every code cell numbered, none running: the kernel went through the whole notebook
        page.wait_for_function(
            """(n) => { const p = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')]
                        .map(e => e.textContent); return p.length === n && p.every(t => /\\[\\d+\\]/.test(t)); }""",
            arg=code_cells, timeout=420_000, polling=1000)
        assert page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr'] "
                            ":text('Traceback')").count() == 0
        assert page.locator(".jp-OutputArea-output .jp-RenderedText[data-mime-type*='error']").count() == 0

        frame_element = page.locator("iframe[title='attention explorer']").last
        frame_element.scroll_into_view_if_needed()
        frame = frame_element.element_handle().content_frame()
        frame.wait_for_function("document.body.dataset.thumbs === 'done'", timeout=60_000)
        lines = frame.locator("#lines line.attn")
        first = lines.count()
        assert first > 0, "the inline explorer draws its lines"

        frame.select_option("#layer", "3")
        frame.wait_for_function("document.body.dataset.layer === '3'")
        assert lines.count() > 0
        assert frame.locator("#layer").input_value() == "3"

        frame.click(".head-toggle[data-head='0']")   # head 1 off, then all off: no lines
        frame.click("#no-heads")
        frame.wait_for_function("document.querySelectorAll('#lines line.attn').length === 0")
        frame.click(".head-toggle[data-head='4']")   # one head on: its lines only
        frame.wait_for_function("document.querySelectorAll('#lines line.attn').length > 0")
        one_head = lines.count()
        frame.click("#all-heads")
        frame.wait_for_function(f"document.querySelectorAll('#lines line.attn').length > {one_head}")

        all_lines = lines.count()
        page.evaluate("() => window.jupyterapp.commands.execute('application:toggle-left-area')")
        frame_element.evaluate("e => e.scrollIntoView({block: 'start'})")
        frame.locator(".tok.left").filter(has_text=re.compile(r"^\W?it$")).first.hover()  # "it"
        frame.wait_for_function(f"document.querySelectorAll('#lines line.attn').length < {all_lines}")

        shot = tmp_path / "jupyterlab.png"
        page.wait_for_timeout(300)
        page.screenshot(path=str(shot))
        if os.environ.get("ATTNKIT_SCREENSHOT"):
            shutil.copy(shot, ROOT / os.environ["ATTNKIT_SCREENSHOT"])
        assert errors == [], errors
        assert outside == [], outside
    finally:
        browser.close()
