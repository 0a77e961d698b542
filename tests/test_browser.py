"""The admin in a real browser: headless Chromium logs in to a real server, opens the
changelist and the summary, and saves the screenshots the README shows."""

from __future__ import annotations

import os
import shutil
import tempfile
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from testkit.servers import ROOT, Server, manage, serve
from tests.conftest import missing_service

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
# The README's screenshots are rewritten only on request (UPDATE_SCREENSHOTS=1),
# so that a test run leaves the tree as it found it.
DOCS = ROOT / "docs" if os.environ.get("UPDATE_SCREENSHOTS") == "1" else Path(tempfile.mkdtemp())
PASSWORD = "browser-test-pw"  # noqa: S105

# Rows of every state, beside the fresh ones the requests make.
SEED = textwrap.dedent(
    """
    import time
    from django.contrib.auth.models import User
    from coalescing.entry import Entry, make_key
    from coalescing.models import CacheEntry

    User.objects.create_superuser("admin", "admin@example.com", {password!r})
    now = time.time()
    rows = []
    for product, age_s, status in [
        ("SKU100", 25, 200), ("SKU101", 42, 200), ("SKU200", 95, 200),
        ("SKU201", 240, 200), ("SKU300", 3600, 200), ("MISSING9", 2, 404),
        ("MISSING8", 30, 404),
    ]:
        key, key_hash = make_key("products", product + "::*")
        body = b'{{"detail":"Not found"}}' if status == 404 else (
            b'{{"id":"%s","name":"Product %s","price":12.5}}' % (product.encode(), product.encode())
        )
        rows.append(Entry(key_hash, key, "products", product, status, body,
                          "application/json", round(now - age_s, 3)))
    CacheEntry.objects.upsert_many(rows)
    """
)


@pytest.fixture
def chrome_driver(tmp_path: Path) -> Iterator[object]:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing_service("selenium is not installed (pip install selenium)")
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        missing_service("Chromium is missing (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--window-size=1280,900",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def admin_server(tmp_path: Path) -> Iterator[Server]:
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}", "PRODUCT_API_BASE": ""}
    for args in (("migrate", "-v", "0"), ("shell", "-c", SEED.format(password=PASSWORD))):
        done = manage(*args, env=env)
        assert done.returncode == 0, done.stderr
    server = serve(env)
    try:
        for query in (
            "/products?productId=SKU123&fields=name,price",
            "/products?productId=SKU123&fields=name,price",
            "/products?productId=SKU100",  # stale in the database: served, and refreshed
            "/products?productId=MISSING1",
            "/prices?productId=SKU123&region=eu",
        ):
            assert server.get(query).status_code in (200, 404)
        with ThreadPoolExecutor(8) as pool:  # a stampede: one upstream call, the rest wait
            answers = list(pool.map(server.get, ["/prices?productId=SKU124&region=eu"] * 8))
        assert all(a.status_code == 200 for a in answers)
        yield server
    finally:
        server.stop()


def test_admin_in_chromium(chrome_driver, admin_server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver, url = chrome_driver, admin_server.url
    wait = WebDriverWait(driver, 15)
    driver.get(f"{url}/admin/coalescing/cacheentry/")
    assert "/admin/login/" in driver.current_url  # anonymous: sent to log in
    driver.find_element(By.NAME, "username").send_keys("admin")
    driver.find_element(By.NAME, "password").send_keys(PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    wait.until(ec.presence_of_element_located((By.ID, "result_list")))
    # the navigation sidebar folded, so the screenshot has room for every column
    driver.execute_script("localStorage.setItem('django.admin.navSidebarIsOpen', 'false')")
    driver.refresh()
    wait.until(ec.presence_of_element_located((By.ID, "result_list")))
    assert driver.current_url.endswith("/admin/coalescing/cacheentry/"), driver.current_url
    header = driver.find_element(By.ID, "header").value_of_css_property("background-color")
    assert header != "rgba(0, 0, 0, 0)", "the admin's stylesheets did not load"
    rows = driver.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")
    assert len(rows) == 11  # 7 seeded, 4 more from the requests (one of them a 404)
    badges = {b.text for b in driver.find_elements(By.CSS_SELECTOR, "td.field-state span")}
    assert badges == {"fresh", "stale", "expired", "negative"}
    DOCS.mkdir(exist_ok=True)
    assert driver.save_screenshot(str(DOCS / "admin-changelist.png"))

    driver.find_element(By.CSS_SELECTOR, ".object-tools a[href$='/summary/']").click()
    wait.until(ec.presence_of_element_located((By.ID, "counter-chart")))
    assert driver.current_url.endswith("/admin/coalescing/cacheentry/summary/")
    counts = driver.find_element(By.ID, "entry-counts").text
    assert "products" in counts and "prices" in counts
    bars = driver.find_elements(By.CSS_SELECTOR, "#counter-chart rect")
    assert any(float(bar.get_attribute("width")) > 0 for bar in bars)
    # the whole page: the window grows by what its content overflows the viewport
    overflow = driver.execute_script(
        "return document.documentElement.scrollHeight - window.innerHeight"
    )
    if overflow > 0:
        driver.set_window_size(1280, 900 + overflow)
    assert driver.save_screenshot(str(DOCS / "admin-summary.png"))
