"""The marketers' console in a real browser: Debian's headless Chromium, driven
by Selenium, against the app under uvicorn on 127.0.0.1 serving a trained
demo shop (3,000 customers, 400 items; one customer renamed to a non-ASCII
id). What a marketer does, checked against the JSON API the page reads:

search a customer (suggestions as they type) and open them; see their picks,
the timing plot and its words; change a rule and see the picks change; open
an item; build a campaign list, see its count, download the CSV and check its
rows; and get a clear message for an unknown customer, an empty search and a
window of 0 or 10,000 days.

Without Chromium the module is skipped, except under CI (``CI`` set), where a
missing browser is a failure: ``.ci/run`` installs it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.console_browser import browser_paths, headless_chromium, served
from tests.console_shop import DemoShop, train_demo_shop

if browser_paths() is None:
    reason = (
        "chromium and chromium-driver are not installed "
        "(apt-get install chromium chromium-driver; .ci/run does)"
    )
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)

from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

WAIT_S = 20
NON_ASCII = "Zoë Ørsted-東京"


@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> DemoShop:
    return train_demo_shop(tmp_path_factory.mktemp("e2e"), rename={"C000007": NON_ASCII})


@pytest.fixture(scope="module")
def base(shop) -> Iterator[str]:
    with served(shop.models) as url:
        yield url


@pytest.fixture(scope="module")
def downloads(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(downloads):  # type: ignore[no-untyped-def]
    driver = headless_chromium(1366, 900, downloads=downloads)
    # headless Chromium saves downloads only when told where, through DevTools
    driver.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
    )
    yield driver
    driver.quit()


def api(base: str, path: str, **params) -> dict:  # type: ignore[no-untyped-def]
    query = urllib.parse.urlencode(params, doseq=True)
    with urllib.request.urlopen(f"{base}{path}{'?' + query if query else ''}", timeout=30) as r:
        return json.loads(r.read())


def api_text(base: str, path: str, **params) -> str:  # type: ignore[no-untyped-def]
    query = urllib.parse.urlencode(params, doseq=True)
    with urllib.request.urlopen(f"{base}{path}?{query}", timeout=60) as r:
        return r.read().decode()


def wait(driver, condition, what: str):  # type: ignore[no-untyped-def]
    try:
        return WebDriverWait(driver, WAIT_S).until(condition)
    except TimeoutException:
        raise AssertionError(f"timed out after {WAIT_S}s waiting for {what}") from None


def visible(driver, css: str):  # type: ignore[no-untyped-def]
    return wait(driver, ec.visibility_of_element_located((By.CSS_SELECTOR, css)), css)


def rows(driver, css: str) -> list[list[str]]:  # type: ignore[no-untyped-def]
    """A table's cells as text, read in one step (the page may be redrawing it)."""
    return driver.execute_script(
        """const t = document.querySelector(arguments[0]);
        return t ? [...t.querySelectorAll("tr")].filter(tr => tr.querySelector("td"))
          .map(tr => [...tr.querySelectorAll("td")].map(td => td.innerText.trim())) : [];""",
        css,
    )


def message(driver) -> str:  # type: ignore[no-untyped-def]
    el = visible(driver, "#message")
    wait(driver, lambda d: el.text.strip(), "a message")
    return el.text


def picks_of(driver) -> list[str]:  # type: ignore[no-untyped-def]
    return [r[1] for r in rows(driver, "#picks")]


def test_search_suggests_as_you_type_and_opens_a_shareable_link(browser, base):
    browser.get(base + "/")
    box = visible(browser, "#customer-search")
    box.send_keys("C0001")
    visible(browser, "#customer-suggestions li")
    suggested = [
        li.text.split("\n")[0]
        for li in browser.find_elements(By.CSS_SELECTOR, "#customer-suggestions li[data-i]")
    ]
    expected = api(base, "/v1/customers", q="C0001", limit=10)
    assert suggested == [c["customer_id"] for c in expected["customers"]]
    assert (
        expected["total"] == 100
        and "100 matches" in browser.find_element(By.ID, "customer-search-note").text
    )
    # arrow down twice and Enter opens the second suggestion at its own address
    box.send_keys(Keys.ARROW_DOWN, Keys.ARROW_DOWN, Keys.ENTER)
    chosen = suggested[1]
    wait(browser, ec.text_to_be_present_in_element((By.ID, "customer-title"), chosen), "title")
    assert urllib.parse.unquote(urllib.parse.urlparse(browser.current_url).path) == (
        f"/customers/{chosen}"
    )
    # the link works on its own, and so does /?customer=
    for url in (browser.current_url, f"{base}/?customer={chosen}"):
        browser.get(url)
        wait(browser, ec.text_to_be_present_in_element((By.ID, "customer-title"), chosen), url)


def test_a_non_ascii_id_is_found_by_its_folded_prefix(browser, base):
    browser.get(base + "/")
    box = visible(browser, "#customer-search")
    box.send_keys("zoë ør")  # other case, composed accents
    li = visible(browser, "#customer-suggestions li[data-i]")
    assert li.text.split("\n")[0] == NON_ASCII
    box.send_keys(Keys.ARROW_DOWN, Keys.ENTER)
    wait(browser, ec.text_to_be_present_in_element((By.ID, "customer-title"), NON_ASCII), "title")
    visible(browser, "#picks td")


def test_the_customer_view_shows_picks_history_and_the_timing_plot(browser, base, shop):
    cid = "C001280"
    browser.get(f"{base}/customers/{cid}")
    visible(browser, "#picks td")
    rec = api(base, f"/v1/customers/{cid}/recommendations", k=10)
    shown = rows(browser, "#picks")
    assert [r[1] for r in shown] == [i["title"] for i in rec["items"]]
    assert [r[4] for r in shown] == [i["reason"] for i in rec["items"]]
    assert [r[2] for r in shown] == [i["category"] for i in rec["items"]]
    # the plot: P(buy within t) for t = 1..90, and the API's own words under it
    plot = visible(browser, "#timing-plot svg")
    points = plot.find_element(By.CSS_SELECTOR, "polyline.curve").get_attribute("points")
    assert len(points.split()) == 90
    nxt = api(base, f"/v1/customers/{cid}/next-purchase", horizon_days=90)
    words = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#timing-words li")]
    assert words == nxt["summary"]
    assert "still a customer: " in words[0] and "100%" not in words[0]
    # the purchase history, newest first, as the timeline API gives it
    line = api(base, f"/v1/customers/{cid}/timeline", limit=12)
    days = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#history .day")]
    assert days == [o["date"] for o in line["orders"]]
    assert len(browser.find_elements(By.CSS_SELECTOR, "#history-strip circle.dot")) == len(
        line["purchase_dates"]
    )
    # the due rebuys
    assert rows(browser, "#again")


def test_a_one_time_buyer_never_reads_as_certainly_active(browser, base, shop):
    from recommender.store.bundle import load_bundle

    bundle = load_bundle(shop.models)
    s = bundle.timing.summary_
    row = int(((s.x == 0) & s.has_history).argmax())
    cid = bundle.customers.id(row)
    browser.get(f"{base}/customers/{urllib.parse.quote(cid)}")
    visible(browser, "#timing-words li")
    text = browser.find_element(By.ID, "timing-words").text
    assert "Bought on one day only" in text and "100%" not in text
    assert not browser.find_elements(By.CSS_SELECTOR, "#timing-plot line.ceiling")


def test_changing_a_rule_changes_the_picks(browser, base):
    from selenium.webdriver.support.ui import Select

    cid = "C001280"
    browser.get(f"{base}/customers/{cid}")
    visible(browser, "#picks td")
    before = picks_of(browser)
    k = browser.find_element(By.ID, "rule-k")
    k.clear()
    k.send_keys("3")
    wait(browser, lambda d: len(picks_of(d)) == 3, "three picks")
    assert picks_of(browser) == before[:3]
    # what they bought: hidden altogether, then all shown; each the API's list under that rule
    purchases = Select(browser.find_element(By.ID, "rule-purchases"))
    lists = []
    for value in ("true", "false"):
        purchases.select_by_value(value)
        rec = api(base, f"/v1/customers/{cid}/recommendations", k=3, exclude_purchased=value)
        lists.append([i["title"] for i in rec["items"]])
        wait(browser, lambda d, want=lists[-1]: picks_of(d) == want, f"picks, {value}")
    assert lists[0] != lists[1], "hiding what they bought changed nothing for this customer"
    # only one category, purchases as the shop's pages show them
    purchases.select_by_value("")
    browser.find_element(By.CSS_SELECTOR, "#rule-categories input[value='Coffee & Tea']").click()
    rec = api(base, f"/v1/customers/{cid}/recommendations", k=3, category="Coffee & Tea")
    want = [i["title"] for i in rec["items"]]
    assert want != before[:3]
    wait(browser, lambda d: picks_of(d) == want, f"coffee picks {want}")
    assert {r[2] for r in rows(browser, "#picks")} == {"Coffee & Tea"}


def test_an_item_page_shows_similar_items_buyers_and_likely_buyers(browser, base):
    browser.get(f"{base}/customers/C001280")
    first = visible(browser, "#picks td a")
    title = first.text
    first.click()
    wait(browser, ec.text_to_be_present_in_element((By.ID, "item-title"), title), "item page")
    item_id = urllib.parse.unquote(urllib.parse.urlparse(browser.current_url).path)[
        len("/items/") :
    ]
    visible(browser, "#buyers td")
    visible(browser, "#newbuyers td")
    sim = api(base, f"/v1/items/{item_id}/similar", k=8)
    assert [r[0] for r in rows(browser, "#similar")] == [i["title"] for i in sim["items"]]
    buyers = api(base, f"/v1/items/{item_id}/buyers", limit=15)
    shown = [r[0] for r in rows(browser, "#buyers")]
    assert shown == [c["customer_id"] for c in buyers["customers"]]
    likely = api(base, f"/v1/items/{item_id}/likely-buyers", limit=10)
    assert [r[0] for r in rows(browser, "#newbuyers")] == [
        c["customer_id"] for c in likely["new"]["customers"]
    ]
    # a buyer's link leads back to the customer
    browser.find_element(By.CSS_SELECTOR, "#buyers td a").click()
    visible(browser, "#customer-title")


def test_build_a_campaign_list_count_it_and_download_it(browser, base, downloads):
    browser.get(base + "/campaigns")
    visible(browser, "#c-preview td")
    days = browser.find_element(By.ID, "c-days")
    days.clear()
    days.send_keys("14")
    lo = browser.find_element(By.ID, "c-min")
    lo.clear()
    lo.send_keys("0.3")
    browser.find_element(By.CSS_SELECTOR, "#c-categories input[value='Pet Supplies']").click()
    params = {"kind": "likely", "within_days": "14", "min_probability": "0.3",
              "max_probability": "1", "category": "Pet Supplies", "picks": "3"}  # fmt: skip
    want = api(base, "/v1/campaigns", limit=20, **params)
    assert 10 < want["count"] < 3000
    wait(
        browser,
        ec.text_to_be_present_in_element((By.ID, "c-count"), f"{want['count']:,} customers match"),
        "the count",
    )
    wait(
        browser,
        lambda d: (
            [r[0] for r in rows(d, "#c-preview")] == [c["customer_id"] for c in want["customers"]]
        ),
        "the preview",
    )
    # the address holds the list, so it can be shared
    assert "within_days=14" in browser.current_url and "Pet+Supplies" in browser.current_url
    link = browser.find_element(By.ID, "c-download")
    assert f"({want['count']:,} rows)" in link.text
    for old in downloads.glob("*.csv"):
        old.unlink()
    link.click()
    deadline = time.monotonic() + WAIT_S
    while not list(downloads.glob("*.csv")) and time.monotonic() < deadline:
        time.sleep(0.2)
    files = list(downloads.glob("*.csv"))
    assert files, "the CSV was not downloaded"
    got = list(csv.DictReader(io.StringIO(files[0].read_text(encoding="utf-8"))))
    assert len(got) == want["count"]
    # the rows are the API's list, in its order, with the API's picks for each customer
    assert [r["customer_id"] for r in got[:20]] == [c["customer_id"] for c in want["customers"]]
    same = list(csv.DictReader(io.StringIO(api_text(base, "/v1/campaigns/download", **params))))
    assert got == same
    for r in got[:5]:
        rec = api(base, f"/v1/customers/{urllib.parse.quote(r['customer_id'])}/recommendations",
                  k=3)  # fmt: skip
        assert [r["pick_1"], r["pick_2"], r["pick_3"]] == [i["item_id"] for i in rec["items"]]
        assert float(r["p_purchase"]) >= 0.3


def test_bad_input_on_the_page_gets_a_clear_message(browser, base):
    browser.get(base + "/customers/nobody-at-all")
    text = message(browser)
    assert "No customer" in text and "nobody-at-all" in text
    assert browser.find_element(By.ID, "customer").is_displayed() is False

    browser.get(base + "/")
    visible(browser, "#customer-search")
    browser.find_element(By.ID, "customer-go").click()
    assert "Type at least one character" in message(browser)

    for window in ("0", "10000"):
        browser.get(base + f"/campaigns?within_days={window}")
        text = message(browser)
        assert "between 1 and 365 days" in text and window in text, text
        assert browser.find_element(By.ID, "c-count").text == "—"
        assert "disabled" in browser.find_element(By.ID, "c-download").get_attribute("class")
    # and typing it in the form says the same
    browser.get(base + "/campaigns")
    visible(browser, "#c-preview td")
    days = browser.find_element(By.ID, "c-days")
    days.clear()
    days.send_keys("0")
    wait(browser, lambda d: "between 1 and 365 days" in d.find_element(By.ID, "message").text,
         "the window message")  # fmt: skip


def test_the_model_view_names_the_version_its_quality_and_report(browser, base):
    browser.get(base + "/model")
    visible(browser, "#model-ranking td")
    m = api(base, "/v1/model")
    assert m["version"] in browser.find_element(By.ID, "model-facts").text
    assert (
        f"{m['as_of']} (the last day of the log)" in browser.find_element(By.ID, "model-facts").text
    )
    shown = {r[0]: r[1] for r in rows(browser, "#model-ranking")}
    served = (m["metrics"].get("serving") or {}).get("list") or "als"
    assert f"{served} (served)" in shown
    for name, figures in m["metrics"]["ranking"].items():
        label = f"{name} (served)" if name == served else name
        assert shown[label] == f"{figures['ndcg@10']:.3f}"
    timing = {r[0]: r[1] for r in rows(browser, "#model-timing")}
    assert timing[f"encore ({m['metrics']['timing']['model']})"] == (
        f"{m['metrics']['timing']['rmse']:.3f}"
    )
    # every view's header links to the training report, which loads
    href = browser.find_element(By.ID, "report-link").get_attribute("href")
    with urllib.request.urlopen(href, timeout=30) as r:
        assert r.status == 200 and b"<html" in r.read(2000).lower()
