"""What a researcher sees in ``mlflow ui``, checked in a real headless Chromium.

A real `smoke` suite (2 cells on the real BreastMNIST file) runs into a temporary store,
``mlflow ui`` serves it on a free 127.0.0.1 port, and Selenium drives Debian's ``chromium`` through ``chromedriver``. The UI is
a React single-page app, so every check waits for text in the live DOM (WebDriverWait),
never for a fixed time.

Needs: ``apt-get install chromium chromium-driver`` and ``pip install selenium``; skipped
with the reason otherwise. Runtime: 15-25 s on 2 shared CPU cores (server start 4-17 s, each
page a few seconds), so it is not marked slow. ``BENCH_SCREENSHOT=/path/shot.png`` saves the
runs table as a user sees it (parent row expanded, assistant panel closed). Everything started here is stopped here: the server by
its process group, the browser by ``quit()`` (and its process tree if it outlives that).
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
from selenium.common.exceptions import (  # noqa: E402
    ElementClickInterceptedException, TimeoutException, WebDriverException)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

# on the worker that holds the session's real `smoke` run (tests/conftest.py real_smoke)
pytestmark = pytest.mark.xdist_group("real_smoke")

from bench import mlflow_native as N  # noqa: E402

log = logging.getLogger(__name__)

def _executable(env: str, *names: str) -> str | None:
    """``$env`` when set (must be executable), else the first of ``names`` on PATH."""
    path = os.environ.get(env) or next(filter(None, map(shutil.which, names)), None)
    return path if path and os.access(path, os.X_OK) else None


CHROMIUM = _executable("BENCH_CHROMIUM", "chromium", "chromium-browser")
CHROMEDRIVER = _executable("BENCH_CHROMEDRIVER", "chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver; "
                "or set BENCH_CHROMIUM / BENCH_CHROMEDRIVER)", allow_module_level=True)

SERVER_START_S = 90   # `mlflow ui` imports a lot; 2 busy cores can take a while
PAGE_S = 60           # first render of the SPA (bundle parse + API calls)
PARENT = "suite-smoke"
CELLS = ("breastmnist-ce-noaug-s0-official", "breastmnist-aucm-noaug-s0-official")
FLAG, MD5 = "breastmnist", "750601b1f35ba3300ea97c75c52ff8f6"  # the official file's MD5
CONTEXT = "official"


# ------------------------------------------------------------------ store, server, browser
def _experiment_id(uri: str) -> str:
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri).get_experiment_by_name("medauc-bench/smoke").experiment_id


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGTERM the process group (mlflow ui -> uvicorn), then SIGKILL whatever is left."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group, even if the leader exited
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


# session scope, not module: under xdist a worker may run another module's test between two of these,
# and a module fixture would then be torn down and started again (a second mlflow ui, ~45 s)
@pytest.fixture(scope="session")
def ui(tmp_path_factory, real_smoke):
    """(base URL, experiment id) of a running ``mlflow ui`` on the session's real `smoke` store
    (tests/conftest.py: the store a user has after `bench suite smoke`)."""
    from tests.conftest import copy_store

    root = tmp_path_factory.mktemp("ui")
    uri = copy_store(real_smoke, root)  # the UI's own copy: it may migrate or write its own tables
    experiment_id = _experiment_id(uri)
    port = _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
           "MLFLOW_ENABLE_TELEMETRY": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    server_log = open(root / "server.log", "wb")
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
           "--default-artifact-root", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=server_log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline, t0 = time.monotonic() + SERVER_START_S, time.monotonic()
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow ui exited ({proc.returncode}): {(root / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow ui not up after {SERVER_START_S}s: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        log.info("mlflow ui up on %s after %.1fs", base, time.monotonic() - t0)
        yield base, experiment_id
    finally:
        _kill_tree(proc)
        server_log.close()


@pytest.fixture(scope="session")
def browser():
    profile = tempfile.mkdtemp(prefix="bench-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--disable-extensions", "--window-size=1600,900",
                f"--user-data-dir={profile}"):
        opts.add_argument(arg)
    service = Service(CHROMEDRIVER)  # an explicit driver path: Selenium Manager is never consulted
    driver = webdriver.Chrome(service=service, options=opts)
    try:
        yield driver
    finally:
        try:
            driver.quit()
        finally:
            proc = getattr(service, "process", None)
            if proc is not None and proc.poll() is None:
                proc.kill()
            shutil.rmtree(profile, ignore_errors=True)


# ------------------------------------------------------------------ page helpers
def _body(driver) -> str:
    try:
        return driver.find_element(By.TAG_NAME, "body").text
    except WebDriverException:
        return ""


def wait_for_text(driver, *texts: str, timeout: float = PAGE_S) -> str:
    """Wait until every text is on the page (case-insensitive); return the page text."""
    want = [t.lower() for t in texts]
    try:
        WebDriverWait(driver, timeout, poll_frequency=0.25).until(
            lambda d: all(t in _body(d).lower() for t in want))
    except TimeoutException:
        missing = [t for t in texts if t.lower() not in _body(driver).lower()]
        pytest.fail(f"{missing} not on {driver.current_url} after {timeout}s; page text: {_body(driver)[:1500]!r}")
    return _body(driver)


def click(driver, element) -> None:
    """A real click; a script click when a popover or toast covers the element."""
    try:
        element.click()
    except ElementClickInterceptedException:
        driver.execute_script("arguments[0].click();", element)


def close_assistant(driver) -> None:
    """The 3.17 UI opens an 'MLflow Assistant' side panel by default; close it to free the table's width."""
    if "MLflow Assistant" not in _body(driver):
        return
    for button in driver.find_elements(By.CSS_SELECTOR, "button[aria-label='Close']"):
        if button.is_displayed():
            click(driver, button)
            break


def expand_parent(driver, run_name: str) -> None:
    """Nested runs are collapsed under their parent; click the parent's expander button."""
    xpath = (f"//div[@role='row'][.//a[normalize-space()='{run_name}']]"
             "//button[contains(@data-component-id, 'runnamecellrenderer')]")
    button = WebDriverWait(driver, PAGE_S).until(lambda d: d.find_element(By.XPATH, xpath))
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", button)
    click(driver, button)


def path_of(url: str) -> str:
    return url.split("#", 1)[-1].split("?", 1)[0]


def open_fresh(driver, url: str) -> None:
    """Open ``url`` as a first-time visitor would: no stored UI state, a new document.

    The UI's routes live in the URL's #fragment, so going from one of its pages to another is
    a same-document navigation that keeps React's in-memory state; a blank page in between
    forces a full load, and clearing localStorage forgets a remembered GenAI/ML choice.
    """
    if driver.current_url.startswith("http"):
        driver.execute_script("window.localStorage.clear()")
    driver.get("about:blank")
    driver.get(url)


# ------------------------------------------------------------------ tests
def test_runs_table_shows_the_suite_its_cells_and_their_dataset(ui, browser):
    base, exp = ui
    open_fresh(browser, N.runs_table_url(base, exp))
    wait_for_text(browser, PARENT, "Dataset", "val_auc", "test_auc")  # the saved view's columns
    close_assistant(browser)
    expand_parent(browser, PARENT)
    text = wait_for_text(browser, *CELLS, f"{FLAG} ({MD5[:8]})", CONTEXT)
    assert path_of(browser.current_url).endswith("/runs")
    assert "3 matching runs" in text  # the parent and its two cells
    shot = os.environ.get("BENCH_SCREENSHOT")
    if shot:
        Path(shot).parent.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(shot)
        log.info("screenshot: %s", shot)


def test_experiment_link_lands_on_the_runs_table(ui, browser):
    """The experiment link we print opens the runs table (Runs tab, ML side bar), not Traces."""
    base, exp = ui
    open_fresh(browser, N.experiment_url(base, exp))
    WebDriverWait(browser, PAGE_S).until(lambda d: path_of(d.current_url).endswith("/runs"),
                                         message=f"no redirect to the runs table from {N.experiment_url(base, exp)}")
    text = wait_for_text(browser, PARENT, "Dataset", "Model registry")
    assert "Observability" not in text  # the GenAI side bar's section; the ML one has Runs/Models/Traces


def test_bare_experiment_url_still_opens_genai_overview(ui, browser):
    """Why our links carry ``?workflowType=machine_learning``: MLflow 3.17.2 lands a fresh browser
    on the GenAI overview/traces whatever the experiment's tags say. If this starts failing after
    an MLflow upgrade, the landing logic changed: revisit ``bench.mlflow_native``."""
    base, exp = ui
    open_fresh(browser, f"{base}/#/experiments/{exp}")
    WebDriverWait(browser, PAGE_S).until(
        lambda d: any(p in path_of(d.current_url) for p in ("/overview", "/traces", "/runs")),
        message="the bare experiment URL did not redirect to any tab")
    assert any(p in path_of(browser.current_url) for p in ("/overview", "/traces")), browser.current_url
