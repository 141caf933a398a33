"""The dashboard in headless Chromium (Debian's package, driven by playwright) against a running
hub, with simulated devices publishing over a real mosquitto: what a person would see."""

from __future__ import annotations

import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from cloud_hub.broker.local import RunningBroker
from cloud_hub.experiments import engine as en
from cloud_hub.experiments.design import A, B, Rate
from cloud_hub.quality.metrics import Floors
from cloud_hub.quality.report import save_floors
from cloud_hub.rollout import engine as ro
from cloud_hub.store.database import Store
from cloud_hub.web.api import WebAuth, create_app
from cloud_hub.web.server import WebServer
from edge_agent.drift import DriftMonitor
from edge_agent.protocol.card import parse_card
from edge_agent.protocol.ids import prediction_id
from edge_agent.protocol.messages import Batch, ModelRef, Record, StorageCondition
from edge_agent.protocol.records import TelemetryWindow, WindowRows
from tests.support.big_fleet import Seeded, seed_fleet
from tests.support.dashboard_fleet import (
    FEATURES,
    TOKEN,
    HubWithDashboard,
    SimDevice,
    card_json,
    predict_sign,
    publish_card,
    running_hub,
)

pytestmark = pytest.mark.broker
REQUIRE_BROWSER_ENV = "EDGEFLEET_REQUIRE_BROWSER"
WAIT_MS = 15_000
RED = "rgb(211, 47, 47)"  # .level-alert in cloud_hub/web/static/style.css


def chromium_path() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    message = "Chromium is not installed (apt-get install chromium; `make test` does it)"
    if os.environ.get(REQUIRE_BROWSER_ENV) == "1":
        pytest.fail(f"{REQUIRE_BROWSER_ENV}=1 but {message}", pytrace=False)
    pytest.skip(f"{message}; set {REQUIRE_BROWSER_ENV}=1 to make this a failure")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = chromium_path()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, headless=True)
        yield b
        b.close()


@pytest.fixture
def dash(broker: RunningBroker, tmp_path: Path) -> Iterator[HubWithDashboard]:
    with running_hub(broker, tmp_path / "hub") as running:
        yield running


@pytest.fixture
def devices(broker: RunningBroker) -> Iterator[list[SimDevice]]:
    fleet = [SimDevice(broker, f"greenhouse-{i}") for i in (1, 2, 3)]
    yield fleet
    for d in fleet:
        d.stop()


def test_dashboard_shows_fleet_rollout_and_drift_live(
    browser: Browser, dash: HubWithDashboard, devices: list[SimDevice]
) -> None:
    v1, v2 = ModelRef("climate", 1), ModelRef("climate", 2)
    for i, d in enumerate(devices):
        d.model = v1
        d.stats = {"inferences": 100 * (i + 1), "dropped": {"telemetry": i}, "buffered": 0}
        if i == 0:  # its serial port was pulled out three times, and it says nothing now
            d.stats["inputs"] = [
                {"name": "serial:/dev/ttyUSB0", "open": False, "lost": 3, "reopened": 2}
                | {"idle_s": 75.0, "no_input": True}
            ]
        d.status()
        for w in range(5):
            d.telemetry(count=50 + w, p95=2.0 + w * 0.1, errors=w % 2, ts=1_700_000_000.0 + w)
        d.drift(dict.fromkeys(FEATURES, 0.02))
    store = dash.hub.store
    dash.wait("every device's records", lambda: store.count("drift") == 3)
    store.add_refusals({"greenhouse-2": Counter(rate=120)}, 1.0)

    page: Page = browser.new_page()
    page.goto(f"{dash.url}#token={TOKEN}")
    page.evaluate("window.__noReload = true")
    rows = page.locator("#fleet tbody tr")
    expect(rows).to_have_count(3, timeout=WAIT_MS)
    for d in devices:
        row = page.locator(f'#fleet tr[data-device="{d.id}"]')
        expect(row.locator("td.status")).to_have_text("online")
        expect(row.locator("td.model")).to_have_text("climate")
        expect(row.locator("td.version")).to_have_text("1")
        expect(row.locator("td.profile")).to_have_text("raspberry-pi-4")
    expect(page.locator('#fleet tr[data-device="greenhouse-3"] td.dropped')).to_have_text("2")
    expect(page.locator('#fleet tr[data-device="greenhouse-2"] td.refused')).to_have_text(
        "rate 120"
    )
    expect(page.locator('#fleet tr[data-device="greenhouse-1"] td.refused')).to_have_text("–")
    expect(page.locator('#fleet tr[data-device="greenhouse-1"] td.input')).to_have_text(
        "no input 75s, port lost x3"
    )
    expect(page.locator('#fleet tr[data-device="greenhouse-2"] td.input')).to_have_text("-")
    port = page.locator('#inputs tr[data-input="serial:/dev/ttyUSB0"]')  # the selected device
    expect(port.locator("td.idle")).to_have_text("75 s", timeout=WAIT_MS)
    expect(port.locator("td.open")).to_have_text("closed")
    expect(port.locator("td.lost")).to_have_text("3")
    # the selected device's charts: one polyline per latency percentile, from 5 windows
    latency = page.locator('svg[data-chart="latency"] polyline')
    expect(latency).to_have_count(3, timeout=WAIT_MS)
    assert len((latency.first.get_attribute("points") or "").split()) == 5

    # a rollout, canary first: the hub sends the deploy, the device answers with its events
    a, b, c = devices
    r = dash.start_rollout(v2, [[a.id], [b.id, c.id]])
    card = page.locator(f'.rollout[data-rollout="{r.id}"]')
    expect(card.locator(".state")).to_have_text("running", timeout=WAIT_MS)
    assert a.wait_command().model == v2
    expect(card.locator(f'.wave[data-wave="1"] [data-device="{a.id}"]')).to_have_text(
        f"{a.id}: sent", timeout=WAIT_MS
    )
    expect(card.locator("div.wave").first).to_contain_text("in progress")
    a.events(r.id, v2, "offered", "downloading", "verified", "installed", "healthy")
    a.model = v2
    a.status()
    expect(card.locator(".wave-of")).to_have_text("wave 2 of 2", timeout=WAIT_MS)
    expect(card.locator(".progress")).to_have_text("1/3 healthy")
    expect(page.locator(f'#fleet tr[data-device="{a.id}"] td.version')).to_have_text("2")
    for d in (b, c):
        assert d.wait_command().model == v2
        d.events(r.id, v2, "offered", "downloading", "verified", "installed", "healthy")
    expect(card.locator(".state")).to_have_text("completed", timeout=WAIT_MS)
    expect(card.locator(".progress")).to_have_text("3/3 healthy")

    # drift: one device's pressure input shifts; its cell turns red without a reload
    cell = page.locator('#drift tr[data-device="greenhouse-3"] td[data-feature="pressure"]')
    expect(cell).to_have_attribute("data-level", "ok", timeout=WAIT_MS)
    assert cell.evaluate("e => getComputedStyle(e).backgroundColor") != RED
    c.drift({"temperature": 0.03, "humidity": 0.12, "pressure": 0.71})
    expect(cell).to_have_attribute("data-level", "alert", timeout=WAIT_MS)
    expect(cell).to_have_text("0.71")
    assert cell.evaluate("e => getComputedStyle(e).backgroundColor") == RED
    humid = page.locator('#drift tr[data-device="greenhouse-3"] td[data-feature="humidity"]')
    expect(humid).to_have_attribute("data-level", "warn")
    expect(page.locator('#fleet tr[data-device="greenhouse-3"] td.drift')).to_contain_text("alert")
    cell.click()  # its history: two reports
    history = page.locator('#drift-chart svg polyline[data-series="pressure"]')
    expect(history).to_have_count(1, timeout=WAIT_MS)
    assert len((history.get_attribute("points") or "").split()) == 2

    # a write from the page: the token from the link authorises it
    card.locator('button[data-action="rollback"]').click()
    expect(card.locator(".state")).to_have_text(ro.ROLLED_BACK, timeout=WAIT_MS)
    row = store.rollout(r.id)
    assert row is not None and row["state"] == ro.ROLLED_BACK
    assert ro.Rollout.from_json(row["body"]).state == ro.ROLLED_BACK
    assert page.evaluate("window.__noReload") is True, "the page reloaded"
    expect(page.locator("#error")).to_be_hidden()
    page.close()


def test_dashboard_asks_for_a_token_and_refuses_a_wrong_one(
    browser: Browser, dash: HubWithDashboard, devices: list[SimDevice]
) -> None:
    devices[0].status()
    dash.wait("a device", lambda: len(dash.hub.store.devices()) >= 1)
    page = browser.new_page()
    page.goto(dash.url)  # no token in the link
    expect(page.locator("#error")).to_contain_text("401", timeout=WAIT_MS)
    expect(page.locator("#token-form")).to_be_visible()
    page.fill("#token", "not-the-token-at-all")
    page.click("#token-form button")
    expect(page.locator("#error")).to_contain_text("403", timeout=WAIT_MS)
    page.fill("#token", TOKEN)
    page.click("#token-form button")
    expect(page.locator("#fleet tbody tr")).to_have_count(1, timeout=WAIT_MS)
    expect(page.locator("#error")).to_be_hidden()
    expect(page.locator("#token-form")).to_be_hidden()
    page.close()


def test_a_device_whose_disk_is_full_shows_it_until_it_is_over(
    browser: Browser, dash: HubWithDashboard, devices: list[SimDevice]
) -> None:
    a, b, c = devices
    full = StorageCondition(
        False,
        "disk full: /var/lib/edgefleet/buffer/3.log: No space left on device",
        time.time() - 30,
        {"telemetry": 14, "drift": 1},
        ("disk-full",),
    )
    a.stats = {**a.stats, "storage": full.to_json()}
    b.stats = {**b.stats, "storage": StorageCondition().to_json()}
    for d in devices:
        d.status()
    dash.wait("three devices", lambda: len(dash.hub.store.devices()) == 3)
    page = browser.new_page()
    page.goto(f"{dash.url}#token={TOKEN}")
    cell = page.locator(f'#fleet tr[data-device="{a.id}"] td.storage')
    expect(cell.locator("[data-storage]")).to_have_attribute(
        "data-storage", "failing", timeout=WAIT_MS
    )
    expect(cell).to_have_text("disk full 15 unkept")
    assert cell.locator(".badge").evaluate("e => getComputedStyle(e).backgroundColor") != (
        page.locator(f'#fleet tr[data-device="{b.id}"] td.storage .badge').evaluate(
            "e => getComputedStyle(e).backgroundColor"
        )
    )
    expect(page.locator(f'#fleet tr[data-device="{b.id}"] td.storage')).to_have_text("ok")
    expect(page.locator(f'#fleet tr[data-device="{c.id}"] td.storage')).to_have_text("–")
    # the device view (the first device is picked): what failed, since when, what was lost
    line = page.locator("#device-storage")
    expect(line).to_have_attribute("data-storage", "failing", timeout=WAIT_MS)
    expect(line).to_contain_text("storage: disk full: /var/lib/edgefleet/buffer/3.log")
    expect(line).to_contain_text("s ago")
    expect(line).to_contain_text("records it could not keep: 14 telemetry, 1 drift")
    if os.environ.get("EDGEFLEET_SCREENSHOT"):
        page.screenshot(path=os.environ["EDGEFLEET_SCREENSHOT"], full_page=True)

    a.stats = {**a.stats, "storage": StorageCondition(True, unkept=full.unkept).to_json()}
    a.status()  # space came back
    expect(line).to_have_attribute("data-storage", "ok", timeout=WAIT_MS)
    expect(line).to_have_text("storage: ok · records it could not keep: 14 telemetry, 1 drift")
    expect(cell).to_have_text("ok 15 unkept")
    page.select_option("#device-pick", c.id)
    expect(line).to_have_text("storage: not reported by this agent", timeout=WAIT_MS)
    expect(page.locator("#error")).to_be_hidden()
    page.close()


def test_the_fleet_drift_heat_map_shows_a_shift_the_fleet_shares(
    browser: Browser, dash: HubWithDashboard, devices: list[SimDevice]
) -> None:
    """Every device's pressure moved by 0.15 standard deviations: merged over their windows,
    the fleet row (on top) and each cohort's turn red on pressure and stay green elsewhere."""
    model = ModelRef("climate", 1)
    rng = np.random.default_rng(11)
    card = card_json(rng.normal(size=(100_000, len(FEATURES))), FEATURES, model)
    publish_card(dash.hub.home, card)
    monitor_card = parse_card(card)
    for i, d in enumerate(devices):
        d.model = model
        d.status()
        monitor, bodies = DriftMonitor(monitor_card, 200), []
        for _ in range(30):
            x = rng.normal(size=(200, len(FEATURES))) + np.array([0.0, 0.0, 0.15])
            report = monitor.add(x, predict_sign(x))
            assert report is not None
            bodies.append(report)
        d.send("drift", *bodies)
        # the hub registers a device when it ingests its status: label it once it has
        dash.wait(
            f"{d.id} registered", lambda d=d: d.id in {r["id"] for r in dash.hub.store.devices()}
        )
        dash.hub.store.label_device(d.id, group="north" if i < 2 else "south", add=["roof"])
    dash.wait("every window", lambda: dash.hub.store.count("drift") == 90)

    page = browser.new_page()
    page.goto(f"{dash.url}#token={TOKEN}")
    heat = page.locator('#fleet-drift .fleet-map[data-model="climate@1"]')
    rows = heat.locator("tbody tr")
    expect(rows).to_have_count(4, timeout=WAIT_MS)
    cohorts = [rows.nth(i).get_attribute("data-cohort") for i in range(4)]
    assert cohorts == ["fleet", "group:north", "group:south", "tag:roof"]
    fleet = heat.locator('tr[data-cohort="fleet"]')
    expect(fleet.locator("td.status")).to_have_text("alert")
    expect(fleet.locator("td.devices")).to_have_text("3")
    expect(fleet.locator("td.rows")).to_have_text("18000")
    pressure = fleet.locator('td[data-feature="pressure"]')
    expect(pressure).to_have_attribute("data-level", "alert")
    assert pressure.evaluate("e => getComputedStyle(e).backgroundColor") == RED
    assert float(pressure.inner_text()) > 4  # -log10 p
    expect(fleet.locator('td[data-feature="temperature"]')).to_have_attribute("data-level", "ok")
    expect(
        heat.locator('tr[data-cohort="group:north"] td[data-feature="pressure"]')
    ).to_have_attribute("data-level", "alert")
    expect(page.locator("#error")).to_be_hidden()
    page.close()


def test_experiments_show_cohorts_intervals_state_and_decision(
    browser: Browser, dash: HubWithDashboard
) -> None:
    v1, v2 = ModelRef("climate", 1), ModelRef("climate", 2)
    r = dash.start_rollout(v2, [["greenhouse-1"]])
    plan = en.Design("error-rate", 0.05)
    e = en.start("e-shown", v2, v1, "all", plan, ["greenhouse-1", "greenhouse-2"], time.time())
    e.rollouts = {A: r.id, B: r.id}
    running = {A: (ro.RUNNING, ""), B: (ro.RUNNING, "")}
    en.step(e, time.time(), {}, running, lambda c, _d: Rate(10 if c == A else 90, 2000))
    dash.hub.store.add_experiment(e.id, e.state, e.to_json())

    page: Page = browser.new_page()
    page.goto(f"{dash.url}#token={TOKEN}")
    card = page.locator('.experiment[data-experiment="e-shown"]')
    expect(card.locator(".state")).to_have_text("decided", timeout=WAIT_MS)
    expect(card.locator(".head .model")).to_have_text("climate@2 vs climate@1")
    a = card.locator('tr[data-cohort="A"]')
    expect(a.locator("td.model")).to_have_text("climate@2")
    expect(a.locator("td.samples")).to_have_text("2000 / 1570")
    expect(a.locator("td.value")).to_have_text("0.0050")
    expect(a.locator("td.interval")).to_have_text(re.compile(r"^0\.00\d\d to 0\.00\d\d$"))
    expect(card.locator('tr[data-cohort="B"] td.value')).to_have_text("0.0450")
    expect(card.locator(".decision")).to_have_text(
        re.compile(r"^climate@2 wins: error-rate 0\.0050 vs 0\.0450, difference -0\.0400")
    )
    expect(card.locator(".test")).to_contain_text("Newcombe 95% interval")


def test_model_quality_shows_each_version_with_its_interval_and_its_floor(
    browser: Browser, dash: HubWithDashboard
) -> None:
    """300 labels of climate@1 (about 70% right) against a 0.9 floor, 300 of climate@2 (all
    right): the page shows each version's accuracy with its interval, and the alert."""
    store, now = dash.hub.store, time.time()
    save_floors(store, Floors(0.9))
    rng = np.random.default_rng(9)
    for version, boot in ((1, 1), (2, 2)):
        right = rng.random(300) < (0.7 if version == 1 else 1.0)
        rows = WindowRows(boot, 0, tuple([1] * 300))
        body = TelemetryWindow(count=300, model=ModelRef("climate", version), rows=rows).to_body()
        store.add_batch("telemetry", Batch("greenhouse-1", (Record(boot, 0, now, body),)))
        pairs = [(prediction_id("greenhouse-1", boot, i), int(ok)) for i, ok in enumerate(right)]
        store.add_labels(pairs, "api", now)

    page: Page = browser.new_page()
    page.goto(f"{dash.url}#token={TOKEN}")
    old = page.locator('#quality tr[data-model="climate@1"]')
    expect(old.locator("td.labels")).to_have_text("300", timeout=WAIT_MS)
    expect(old.locator('td[data-metric="accuracy"]')).to_have_text(
        re.compile(r"^0\.[67]\d\d \(0\.\d{3} to 0\.\d{3}\)$")
    )
    expect(old).to_have_attribute("data-alert", "true")
    expect(old.locator("td.alert")).to_have_text("below floor")
    new = page.locator('#quality tr[data-model="climate@2"]')
    expect(new.locator('td[data-metric="accuracy"]')).to_have_text(re.compile(r"^1\.000 "))
    expect(new).to_have_attribute("data-alert", "false")
    expect(page.locator("#error")).to_be_hidden()
    page.close()


@pytest.fixture
def big_fleet(tmp_path: Path) -> Iterator[tuple[str, Seeded]]:
    """2,000 devices in a hub's store (tests/support/big_fleet.py), and its dashboard."""
    store = Store(f"sqlite:///{tmp_path / 'hub.sqlite'}")
    seeded = seed_fleet(store, 2000)
    web = WebServer(create_app(store, WebAuth(TOKEN)), "127.0.0.1", 0)
    web.start()
    yield web.url, seeded
    web.stop()


def fleet_ids(page: Page) -> list[str]:
    return [r.get_attribute("data-device") or "" for r in page.locator("#fleet tbody tr").all()]


def test_the_dashboard_at_fleet_scale_pages_filters_sums_and_gates(
    browser: Browser, big_fleet: tuple[str, Seeded]
) -> None:
    url, seeded = big_fleet
    counts = Counter(seeded.severities.values())
    page: Page = browser.new_page()
    page.goto(f"{url}#token={TOKEN}")
    info = page.locator("#page-info")
    expect(info).to_have_text("1–50 of 2000", timeout=WAIT_MS)
    expect(page.locator("#fleet tbody tr")).to_have_count(50)
    for severity in ("alert", "warn", "ok"):
        button = page.locator(f'#severity-filter button[data-severity="{severity}"] .n')
        expect(button).to_have_text(str(counts[severity]))
    # worst first: the first page is all alerts (there are more than 50)
    assert counts["alert"] > 50
    first = fleet_ids(page)
    assert {seeded.severities[d] for d in first} == {"alert"}
    page.click("#page-next")
    expect(info).to_have_text("51–100 of 2000", timeout=WAIT_MS)
    second = fleet_ids(page)
    assert not set(first) & set(second) and len(second) == 50
    assert [seeded.severities[d] for d in second][: counts["alert"] - 50] == ["alert"] * (
        counts["alert"] - 50
    )
    assert seeded.severities[second[-1]] == "warn"  # then the warnings
    # the drift heat map follows the page
    expect(page.locator("#drift tbody tr")).to_have_count(50)

    page.click('#severity-filter button[data-severity="warn"]')
    expect(info).to_have_text(f"1–50 of {counts['warn']}", timeout=WAIT_MS)
    cells = page.locator("#fleet tbody td.severity .badge")
    expect(cells).to_have_count(50)
    assert set(cells.all_inner_texts()) == {"warn"}
    assert all(seeded.severities[d] == "warn" for d in fleet_ids(page))

    # per model version: devices, and rows/s summed over the online devices' windows
    for label in ("climate@1", "climate@2"):
        row = page.locator(f'#versions tr[data-version="{label}"]')
        running = sum(1 for v in seeded.versions.values() if v == label)
        expect(row.locator("td.devices")).to_have_text(str(running))
        expect(row.locator("td.rows-per-s")).to_have_text(f"{seeded.rows_per_s[label]:.1f}")
    page.click('#versions tr[data-version="climate@2"]')  # its devices, the warnings among them
    v2_warn = sum(
        1 for d, s in seeded.severities.items() if s == "warn" and seeded.versions[d] == "climate@2"
    )
    expect(info).to_have_text(f"1–50 of {v2_warn}", timeout=WAIT_MS)
    assert all(seeded.versions[d] == "climate@2" for d in fleet_ids(page))
    expect(page.locator("#model-filter")).to_have_value("climate@2")

    # fleet charts next to the device's: the fleet and each version
    rows_chart = page.locator('#fleet-charts svg[data-chart="fleet rows"] polyline')
    expect(rows_chart).to_have_count(3, timeout=WAIT_MS)
    expect(page.locator('#charts svg[data-chart="latency"]')).to_have_count(1)

    # the rollout: each gate check a row, the soaking wave's live, its soak counting down
    card = page.locator(f'.rollout[data-rollout="{seeded.rollout}"]')
    p95 = card.locator('table.gates tr[data-wave="2"][data-check="p95_ms"]')
    expect(p95).to_have_attribute("data-live", "true", timeout=WAIT_MS)
    expect(p95.locator("td.value")).to_have_text("3.000")
    expect(p95.locator("td.limit")).to_have_text("<= 5.000")
    expect(p95.locator("td.verdict")).to_have_text("pass")
    errors = card.locator('table.gates tr[data-wave="2"][data-check="error_rate"] td.value')
    expect(errors).to_have_text(re.compile(r"^\d+\.\d\d%$"))
    judged = card.locator('table.gates tr[data-wave="1"][data-check="p95_ms"]')
    expect(judged).to_have_attribute("data-live", "false")
    expect(judged.locator("td.value")).to_have_text("2.400")
    expect(card.locator('.wave[data-wave="2"]')).to_contain_text("soaking")
    soak = card.locator(".soak")
    expect(soak).to_have_text(re.compile(r"^wave 2 soaking: \d+ s left of 600 s$"))
    left = int(soak.get_attribute("data-seconds-left") or "0")
    assert 0 < left <= 600
    page.wait_for_function(
        f"document.querySelector('.rollout .soak').dataset.secondsLeft < {left}",
        timeout=WAIT_MS,
    )
    panel = page.locator("#rollouts").inner_text()
    assert '{"' not in panel and "checks" not in panel, panel
    expect(page.locator("#error")).to_be_hidden()
    page.close()
