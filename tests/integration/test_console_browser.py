"""The operator console in a real browser: Debian's chromium driven by Playwright, against a
running radflow that received a study over DICOM (DCMTK storescu), delivered it to a real
storescp and dead-lettered the copies a second destination refused permanently.

An operator logs in, sees a refused association and the dead letters among the recent errors,
finds the study and its deliveries, retries a dead letter, cancels a
worklist item, runs a dry run from an uploaded file and one of a received instance picked on
the Studies page (with the morph's diff); a viewer sees everything and can change
nothing; a form posted without the CSRF token is refused. Screenshots of every page are kept in
the test's folder (``screenshots/``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.dicomgen import write_series
from tests.helpers.peers import ScriptedScp, Storescp, have_storescp
from tests.helpers.proc import HOST, RadflowFactory, RadflowProcess, echoscu, storescu

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]
PASSWORD = "operator-pass-1"
pytestmark = [pytest.mark.dcmtk, pytest.mark.timeout(300),
              pytest.mark.skipif(not have_storescp(), reason="DCMTK storescp not installed"),
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium not installed")]
FAST = {"initial_delay": 0.2, "max_delay": 1.0, "jitter": 0.2, "circuit_failures": 3,
        "circuit_cooldown": 0.5}


def cli(rf: RadflowProcess, *args: str, stdin: str | None = None) -> str:
    done = subprocess.run([sys.executable, "-m", "engine", "users", *args, "--config",
                           str(rf.config_path)], input=stdin, capture_output=True, text=True,
                          timeout=60, check=True)
    return done.stdout


def call(rf: RadflowProcess, method: str, path: str, token: str, body: bytes | None = None,
         ctype: str = "application/json") -> Any:
    req = urllib.request.Request(f"http://{HOST}:{rf.http_port}{path}", data=body,
                                 method=method, headers={"Authorization": f"Bearer {token}",
                                                         "Content-Type": ctype})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def wait(cond: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout} s")
        time.sleep(0.2)


def order(accession: str) -> bytes:
    return "\r".join([
        f"MSH|^~\\&|RIS|HOSP|RADFLOW|RAD|20261204120000||ORM^O01^ORM_O01|C-{accession}|P|2.5.1",
        "PID|1||CONSOLE-P2^^^HOSP^MR||Doe^Jane||19700101|F",
        f"ORC|NW|O-{accession}|F-{accession}||||^^^20261204083000",
        f"OBR|1|O-{accession}|F-{accession}|PROC^Procedure^L||||||||||||||"
        f"{accession}|RP-{accession}|||||CT"]).encode() + b"\r"


@pytest.fixture
def site(radflow: RadflowFactory, tmp_path: Path) -> Iterator[tuple[RadflowProcess, Path]]:
    faulty = ScriptedScp(lambda ds, seen: 0xA900)  # refuses for good: dead letters
    archive = Storescp(tmp_path / "scp").start()
    try:
        routes = tmp_path / "routes"
        routes.mkdir()
        (routes / "10-all.yaml").write_text(
            "version: 1\nroutes:\n  - name: everything\n    destinations: [archive, faulty]\n"
            "    morph: [{op: set, attr: InstitutionName, value: Console Hospital}]\n")
        sink = {"type": "dimse", "host": HOST, "concurrency": 1, "timeout": 10}
        rf = radflow({
            "routing": {"routes_dir": str(routes), "reload_poll_seconds": 0},
            "destinations": {"archive": {**sink, "ae_title": "SINK", "port": archive.port},
                             "faulty": {**sink, "ae_title": "FAULTY", "port": faulty.port}},
            "delivery": {"poll_interval": 0.1, "stats_interval": 0.2, "retry": FAST},
            "site": {"name": "Console test", "time_zone": "Europe/Berlin"}})
        cli(rf, "add", "olga", "--role", "operator", "--password-stdin", stdin=PASSWORD + "\n")
        cli(rf, "add", "vera", "--role", "viewer", "--password-stdin", stdin=PASSWORD + "\n")
        cli(rf, "add", "root", "--role", "admin", "--password-stdin", stdin=PASSWORD + "\n")
        token = cli(rf, "token", "root", "--label", "setup").strip().splitlines()[-1]
        series = write_series(tmp_path / "in", 2)
        storescu(rf, [i.path for i in series])
        wait(lambda: call(rf, "GET", "/api/v1/queues/faulty/dead", token)["total"] == 2,
             "two dead letters")
        call(rf, "POST", "/api/v1/worklist", token, order("ACC-WL-7"), "text/plain")
        # A modality calling the wrong AE title: refused, and listed among the recent errors.
        assert echoscu(rf, "-aet", "INTRUDER", called_ae="NOT-RADFLOW").returncode != 0
        yield rf, series[0].path
    finally:
        archive.stop()
        faulty.stop()


def test_console_in_chromium(site: tuple[RadflowProcess, Path], tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    rf, dicom_file = site
    base = f"http://{HOST}:{rf.http_port}"
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 768})
            page.on("dialog", lambda d: d.accept())  # every change is confirmed
            page.goto(base + "/")
            page.fill("#login-user", "olga")
            page.fill("#login-password", "wrong password")
            page.click("#login button")
            expect(page.locator("#message")).to_contain_text("wrong user name or password")
            page.fill("#login-password", PASSWORD)
            page.click("#login button")
            expect(page.locator("#who")).to_have_text("olga (operator)")
            expect(page.locator("#overview-cards")).to_contain_text("dead letters")
            expect(page.locator("#tz")).to_have_text("Europe/Berlin")
            recent = page.locator("#overview-errors tbody tr", has_text="INTRUDER")
            expect(recent).to_contain_text("association refused", timeout=20_000)
            expect(recent.locator("td[data-col=peer_host]")).to_have_text("127.0.0.1")
            expect(page.locator("#overview-errors tbody tr", has_text="faulty")
                   ).to_contain_text("dead letter")
            page.screenshot(path=str(shots / "overview.png"), full_page=True)

            # Find the study and its deliveries.
            page.goto(base + "/#/studies")
            page.select_option("#study-search select", "patient")
            page.fill("#study-search input[name=value]", "RF-TEST-001")
            page.click("#study-search button")
            trace = page.locator("#study-trace")
            expect(trace).to_contain_text("found")
            deliveries = page.locator("#study-deliveries tbody tr")
            expect(deliveries.filter(has_text="archive").locator("td[data-col=delivered]")
                   ).to_have_text("2")
            expect(deliveries.filter(has_text="faulty").locator("td[data-col=dead]")
                   ).to_have_text("2")
            expect(deliveries.filter(has_text="faulty")).to_contain_text("0xA900")
            page.screenshot(path=str(shots / "studies.png"), full_page=True)

            # Retry one dead letter.
            page.goto(base + "/#/queues")
            page.click("button[data-dest=faulty]")
            expect(page.locator("#dead-letters")).to_contain_text("Dead letters of faulty (2)")
            page.locator(".retry-one").first.click()
            expect(page.locator("#message")).to_have_text("1 queued again.")
            page.screenshot(path=str(shots / "queues.png"), full_page=True)

            # Cancel a worklist item.
            page.goto(base + "/#/worklist")
            page.fill("#wl-search input[name=accession_number]", "ACC-WL-7")
            page.click("#wl-search button")
            page.locator("#wl-results tbody tr").first.click()
            page.click("#wl-cancel")
            expect(page.locator("#message")).to_contain_text("cancelled")
            expect(page.locator("#wl-detail h2").first).to_contain_text("CANCELLED")
            page.screenshot(path=str(shots / "worklist.png"), full_page=True)

            # Dry run from an uploaded file.
            page.goto(base + "/#/routes")
            page.set_input_files("#dryrun-file", str(dicom_file))
            page.click("#dryrun-run")
            result = page.locator("#dryrun-result")
            expect(result).to_contain_text("everything")
            expect(result.locator("tr", has_text="everything")).to_contain_text("yes")
            page.screenshot(path=str(shots / "routes.png"), full_page=True)

            # Dry run of a received instance, picked on the Studies page.
            page.goto(base + "/#/studies")
            page.locator("#study-recent tbody tr", has_text="RF-TEST-001").first.click()
            instances = page.locator("#study-instances tbody tr")
            expect(instances).to_have_count(2)
            picked = instances.first.locator("td[data-col=sop_instance_uid]").inner_text()
            instances.first.locator(".dryrun-pick").click()
            expect(page).to_have_url(re.compile(r"#/routes\?instance="))
            expect(page.locator("#dryrun-instance")).to_have_value(picked)
            result = page.locator("#dryrun-result")
            expect(result.locator("tr", has_text="everything")).to_contain_text("yes")
            expect(page.locator("#dryrun-instance-info")).to_contain_text("STORESCU")
            diff = result.locator("tr", has_text="InstitutionName")
            expect(diff.locator(".diff-after")).to_have_text("Console Hospital")
            page.screenshot(path=str(shots / "routes-picked-instance.png"), full_page=True)

            page.goto(base + "/#/destinations")
            expect(page.locator("#destinations-table")).to_contain_text("FAULTY")
            rows = page.locator("#destinations-table tbody tr")
            expect(rows.filter(has_text="FAULTY").locator("td[data-col='last delivery']")
                   ).to_have_text("none since start")
            expect(rows.filter(has_text="SINK").locator("td[data-col='last delivery']")
                   ).to_contain_text("2026")
            page.screenshot(path=str(shots / "destinations.png"), full_page=True)

            # A form posted from the console's own origin without the CSRF token is refused.
            with page.expect_navigation() as navigation:
                page.evaluate("""() => {
                    const f = document.createElement('form');
                    f.method = 'POST'; f.action = '/api/v1/routes/reload';
                    document.body.append(f); f.submit(); }""")
            answer = navigation.value
            assert answer is not None and answer.status == 403
            assert "CSRF" in answer.text()
            page.screenshot(path=str(shots / "forged-form.png"))

            # A viewer sees everything and can change nothing.
            viewer = browser.new_page(viewport={"width": 1366, "height": 768})
            viewer.goto(base + "/")
            viewer.fill("#login-user", "vera")
            viewer.fill("#login-password", PASSWORD)
            viewer.click("#login button")
            expect(viewer.locator("#who")).to_have_text("vera (viewer)")
            viewer.goto(base + "/#/queues")
            viewer.click("button[data-dest=faulty]")
            expect(viewer.locator("#dead-letters")).to_contain_text("Dead letters of faulty")
            assert viewer.locator(".retry-one, #retry-all, #purge-all").count() == 0
            viewer.goto(base + "/#/worklist")
            expect(viewer.locator("#wl-results")).to_contain_text("item(s)")
            assert viewer.locator("#wl-add").count() == 0
            # Even a hand-made call with the viewer's CSRF token is refused by the server.
            status = viewer.evaluate("""async () => {
                const who = await (await fetch('/api/v1/session')).json();
                const r = await fetch('/api/v1/queues/faulty/retry', {method: 'POST',
                    headers: {'Content-Type': 'application/json', 'X-CSRF-Token': who.csrf},
                    body: JSON.stringify({all: true})});
                return r.status; }""")
            assert status == 403
            viewer.screenshot(path=str(shots / "viewer-queues.png"), full_page=True)
        finally:
            browser.close()
    assert len(list(shots.glob("*.png"))) == 9
