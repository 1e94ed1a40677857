"""The demo page in headless Chromium, against the real service and a real Redis.

Starts ``redis-server`` and the service (uvicorn, in subprocesses, on free ports) on the
tiny test bundle, opens ``/`` with selenium + Debian's chromium/chromedriver (never a
downloaded browser), plays one track and skips the top one, and checks that the skip
reshaped the list. The screenshot lands in ``test-artifacts/demo_page.png``. A second
service with an API key checks that the page shows the service's own error message
(``error.message``) and works once the key is entered. A third serves two variants
and a holdout: the page shows the listener's variant and the per-variant outcome
table (``GET /admin/experiments``).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks import processes

pytestmark = pytest.mark.browser

CHROMIUM = Path(os.environ.get("SKIPREC_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = shutil.which("chromedriver")
SCREENSHOT = processes.REPO_ROOT / "test-artifacts" / "demo_page.png"
UI_TIMEOUT_S = 20.0


@pytest.fixture(scope="module")
def demo_redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis of this module's own, so no other test's users show on the page."""
    binary = processes.redis_server_binary(allow_embedded=True)
    with processes.redis_server(tmp_path_factory.mktemp("redis"), binary=binary) as s:
        yield s.url


@pytest.fixture(scope="module")
def service_url(
    tiny_bundle_dir: Path, demo_redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    log = tmp_path_factory.mktemp("service") / "service.log"
    with processes.api_server(
        tiny_bundle_dir,
        demo_redis_url,
        log,
        ready_path="/readyz",
        env_remove=("SKIPREC_API_KEY",),
        # A steep skip penalty: the skipped track must visibly sink off the list.
        skipped_rule="penalize",
        skipped_penalty="50",
    ) as api:
        yield api.base_url


API_KEY = "demo-page-k3y"


@pytest.fixture(scope="module")
def keyed_service_url(
    tiny_bundle_dir: Path, demo_redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    log = tmp_path_factory.mktemp("keyed_service") / "service.log"
    with processes.api_server(
        tiny_bundle_dir, demo_redis_url, log, ready_path="/readyz", api_key=API_KEY
    ) as api:
        yield api.base_url


@pytest.fixture(scope="module")
def variants_service_url(
    tiny_bundle_dir: Path, make_bundle, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Its own Redis: the experiment counters are global, the table must show only
    this service's variants."""
    table = {
        "a": {"bundle": str(tiny_bundle_dir), "share": 0.5},
        "b": {"bundle": str(make_bundle(seed=1)), "share": 0.3},
        "holdout": {"bundle": None, "share": 0.2},
    }
    log = tmp_path_factory.mktemp("variants_service") / "service.log"
    binary = processes.redis_server_binary(allow_embedded=True)
    redis_dir = tmp_path_factory.mktemp("variants_redis")
    with (
        processes.redis_server(redis_dir, binary=binary) as redis,
        processes.api_server(
            tiny_bundle_dir,
            redis.url,
            log,
            ready_path="/readyz",
            env_remove=("SKIPREC_API_KEY",),
            variants=json.dumps(table),
        ) as api,
    ):
        yield api.base_url


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


def test_demo_page_skip_sinks_the_track_and_reshapes_list(browser, service_url):
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


def test_demo_page_shows_the_service_error_and_works_with_the_key(
    browser, keyed_service_url
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    driver.get(f"{keyed_service_url}/?user=e2e-keyed")
    message = driver.find_element(By.CSS_SELECTOR, "[data-testid=message]")
    WebDriverWait(driver, UI_TIMEOUT_S).until(
        lambda d: "error" in message.get_attribute("class")
    )
    # The service's message, not the raw error object.
    assert "401 X-API-Key: missing or invalid API key" in message.text, message.text
    assert "{" not in message.text
    assert _text(driver, "api-status") == "error"
    assert driver.find_element(By.ID, "api-key-box").get_attribute("open") is not None

    key_input = driver.find_element(By.CSS_SELECTOR, "[data-testid=api-key-input]")
    key_input.send_keys(API_KEY + Keys.TAB)  # "change" fires on leaving the field
    _wait_for_generation(driver, 1)
    assert _text(driver, "api-status") == "ok"
    _press(driver, _shown_tracks(driver)[0], "skip")
    _wait_for_generation(driver, 2)
    session = driver.find_elements(By.CSS_SELECTOR, "[data-testid=session-event]")
    assert [event.get_attribute("data-type") for event in session] == ["skip"]


def test_demo_page_shows_the_variant_and_the_outcome_table(
    browser, variants_service_url
):
    from selenium.webdriver.common.by import By

    from service.variants import VariantSpec, assign

    specs = [
        VariantSpec(name, None, share)
        for name, share in (("a", 0.5), ("b", 0.3), ("holdout", 0.2))
    ]
    driver = browser
    shown = set()
    for index in range(60):
        user = f"e2e-variant-{index}"
        variant = specs[assign(user, "skiprec", specs)].name
        if variant in shown:
            continue
        shown.add(variant)
        driver.get(f"{variants_service_url}/?user={user}")
        _wait_for_generation(driver, 1)
        _press(driver, _shown_tracks(driver)[0], "play")  # answers the cold list
        _wait_for_generation(driver, 2)
        _press(driver, _shown_tracks(driver)[0], "play")  # a hit at rank 1
        _wait_for_generation(driver, 3)
        assert _text(driver, "variant") == variant
        if len(shown) == 3:
            break
    rows = {
        row.get_attribute("data-variant"): [
            cell.text for cell in row.find_elements(By.TAG_NAME, "td")
        ]
        for row in driver.find_elements(By.CSS_SELECTOR, "[data-testid=experiment-arm]")
    }
    assert set(rows) == {"a", "b", "holdout"}
    for cells in rows.values():
        # served 3, fallbacks 1 (the cold start), answered 1: a hit, played.
        assert cells[2:5] == ["3", "1", "1"]
        assert cells[5].startswith("100.0% [") and cells[6].startswith("100.0% [")
        assert cells[7].startswith("0.0% [")
