"""Routing cost per instance with 50 routes loaded, beside the intake rate, in one run.

Measures on the same generated instances (small 64x64 CT, or ``--size 512`` for CT-like ones):

1. intake: ``storescu -> radflow`` with no routes (DCMTK storescu, TCP_NODELAY=1), instances/s
   and ms per instance;
2. routing in-process with the 50-route ruleset: header read + evaluation (per instance), and
   the whole router path (journal rows -> plans -> one routing transaction per batch of 32);
3. morph cost per instance (what a sender pays at send time): a small site morph and the
   PS3.15 de-identification profile, bytes in -> bytes out;
4. intake again with the 50 routes loaded in the running engine (routing shares the process).

The target: routing adds under 10 % to the cost of intake. Benchmarks report, they
do not judge. Run: ``python bench/bench_rules.py [--count 500] [--size 64]``.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pydicom

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.durable.spool import Spool  # noqa: E402
from engine.durable.sqlite import SqliteStore  # noqa: E402
from engine.durable.store import DuplicatePolicy, InstanceCommit, InstanceRecord  # noqa: E402
from engine.morph import MorphKeys, morph_bytes  # noqa: E402
from engine.pipeline.header import read_header  # noqa: E402
from engine.pipeline.router import Router  # noqa: E402
from engine.rules.loader import load_ruleset  # noqa: E402
from engine.rules.ruleset import DicomSubject, RoutingContext  # noqa: E402
from tests.helpers import dicomgen  # noqa: E402
from tests.helpers.proc import RadflowProcess, store_responses, storescu  # noqa: E402

SECRET = "bench-secret"
DESTINATIONS = {f"dest{i}": "dimse" for i in range(10)}
MODALITIES = ["CT", "MR", "CR", "DX", "US", "XA", "MG", "PT", "NM", "RF"]


def routes_yaml(count: int = 50) -> str:
    """``count`` routes that look like a hospital's: most do not match a given CT instance."""
    lines = ["version: 1", "routes:"]
    for i in range(count):
        mod = MODALITIES[i % len(MODALITIES)]
        dest = f"dest{i % 10}"
        kind = i % 5
        lines.append(f"  - name: route-{i:02d}")
        if kind == 0:
            lines.append(f"    match: {{attr: Modality, equals: {mod}}}")
        elif kind == 1:
            lines += ["    match:", "      all:", f"        - {{attr: Modality, in: [{mod}, XX]}}",
                      f"        - {{context: calling_ae, regex: \"^{mod}_[0-9]+$\"}}"]
        elif kind == 2:
            lines += ["    match:", "      any:",
                      f"        - {{attr: StudyDescription, regex: \"(?i)protocol-{i}\"}}",
                      f"        - {{attr: InstitutionName, equals: \"Site {i}\"}}"]
        elif kind == 3:
            lines += ["    match:", "      all:", f"        - {{attr: Modality, equals: {mod}}}",
                      f"        - {{attr: SliceThickness, le: {1 + i % 3}}}",
                      "        - not: {attr: ImageType, equals: LOCALIZER}"]
        else:
            lines += ["    trigger: {on: study, quiet_seconds: 30}",
                      f"    match: {{attr: Modality, equals: {mod}}}"]
        lines.append(f"    destinations: [{dest}]")
        if i % 10 == 0:
            lines.append("    morph: [site]")
        if i % 25 == 0:
            lines.append("    morph: [research]")
    lines += ["profiles:",
              "  site:",
              "    - {op: set_if_absent, attr: InstitutionName, value: Example}",
              "    - {op: regex_replace, attr: AccessionNumber, pattern: '^(\\d+)$', "
              "replacement: 'EX\\1'}",
              "  research:",
              "    - {op: deidentify, retain_longitudinal_dates: modified, "
              "pseudonymize_patient: true, clean_descriptors: true}"]
    return "\n".join(lines) + "\n"


def make_data(folder: Path, count: int, size: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    study, series = dicomgen.generate_uid(), dicomgen.generate_uid()
    out = []
    for i in range(count):
        ds = dicomgen.new_dataset("CT", size=size, seed=i, study_instance_uid=study,
                                  series_instance_uid=series, instance_number=i + 1)
        ds.SliceThickness = "1.0"
        ds.StudyDescription = "CT chest routine"
        out.append(dicomgen.write_part10(ds, folder / f"i{i:05d}.dcm"))
    return out


def intake(files: list[Path], work: Path, routes: Path | None) -> float:
    """storescu -> radflow seconds for ``files`` (one association)."""
    overrides: dict[str, object] = {}  # info level: the start-up wait reads engine.started
    if routes is not None:
        overrides["destinations"] = {n: {"type": "dimse", "ae_title": "D", "host": "127.0.0.1",
                                         "port": 4242} for n in DESTINATIONS}
        overrides["routing"] = {"routes_dir": str(routes), "secret": SECRET}
    rf = RadflowProcess(work, overrides)
    rf.start()
    try:
        started = time.perf_counter()
        result = storescu(rf, files, "-aet", "CT_1", timeout=600)
        seconds = time.perf_counter() - started
        ok = store_responses(result.stdout).count("Success")
        if ok != len(files):
            raise SystemExit(f"storescu: {ok}/{len(files)} Success\n{result.stdout[-2000:]}")
        if routes is not None:  # let the router finish before the engine stops
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and any(
                    r["routed_at"] is None for r in rf.journal_rows()):
                time.sleep(0.2)
        rf.stop()
    finally:
        rf.close()
    return seconds


def evaluation(files: list[Path], routes: Path) -> tuple[float, float]:
    """(µs per instance for header read + evaluate, µs for evaluate alone)."""
    rs = load_ruleset(routes, DESTINATIONS, has_secret=True,
                      uid_prefix="1.2.826.0.1.3680043.8.498.")
    ctx = RoutingContext(calling_ae="CT_1")
    started = time.perf_counter()
    for path in files:
        rs.evaluate("dicom", DicomSubject(lambda p=str(path): read_header(p, rs.header_tags),
                                           ctx))
    both = (time.perf_counter() - started) / len(files)
    headers = [read_header(str(p), rs.header_tags) for p in files]
    started = time.perf_counter()
    for ds in headers:
        rs.evaluate("dicom", DicomSubject(ds, ctx))
    alone = (time.perf_counter() - started) / len(files)
    return both * 1e6, alone * 1e6


async def router_path(files: list[Path], work: Path, routes: Path) -> float:
    """µs per instance of the router: journal rows -> plans -> transactions of 32."""
    from types import SimpleNamespace

    store = SqliteStore(work / "r.db")
    await store.open()
    spool = Spool(work / "spool", 0)
    spool.open()
    try:
        records = []
        for i, path in enumerate(files):
            rel = f"objects/b/{path.name}"
            (spool.root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, spool.root / rel)
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            records.append(InstanceCommit(InstanceRecord(
                f"obj{i}", rel, ds.SOPClassUID, ds.SOPInstanceUID, "1.2.840.10008.1.2.1",
                ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.PatientID, ds.AccessionNumber,
                "CT", "CT_1", "RADFLOW", "127.0.0.1", "main", path.stat().st_size, "0" * 64,
                "2026-11-25T12:00:00+00:00"), DuplicatePolicy.VERSION))
        await store.commit_instances(records)
        settings = SimpleNamespace(routing=SimpleNamespace(
            routes_dir=routes, secret=None, uid_prefix="1.2.826.0.1.3680043.8.498.",
            reload_poll_seconds=0), destinations={})
        from engine.pipeline import rulesets

        rules = object.__new__(rulesets.RulesManager)
        rules.keys = MorphKeys(SECRET)
        rules.current = load_ruleset(routes, DESTINATIONS, has_secret=True,
                                     uid_prefix="1.2.826.0.1.3680043.8.498.")
        del settings
        router = Router(store, spool, rules)
        stored = await store.unrouted_instances(0, len(files) + 1)
        started = time.perf_counter()
        for i in range(0, len(stored), 32):
            await router.route(stored[i:i + 32])
        return (time.perf_counter() - started) / len(files) * 1e6
    finally:
        await store.close()


def morphs(files: list[Path], routes: Path) -> dict[str, float]:
    rs = load_ruleset(routes, DESTINATIONS, has_secret=True,
                      uid_prefix="1.2.826.0.1.3680043.8.498.")
    keys = MorphKeys(SECRET)
    out = {}
    for name in ("site", "research"):
        steps = rs.profiles[name]
        data = [p.read_bytes() for p in files[:200]]
        started = time.perf_counter()
        for blob in data:
            morph_bytes(blob, steps, keys)
        out[name] = (time.perf_counter() - started) / len(data) * 1e6
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--size", type=int, default=64, help="pixel matrix (64 or 512)")
    parser.add_argument("--no-intake", action="store_true", help="skip the storescu runs")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="radflow-bench-rules-"))
    try:
        routes = work / "routes"
        routes.mkdir()
        (routes / "50-routes.yaml").write_text(routes_yaml(50), encoding="utf-8")
        files = make_data(work / "data", args.count, args.size)
        print(f"{args.count} CT instances {args.size}x{args.size}, 50 routes "
              f"(10 with a site morph, 2 with PS3.15 de-identification)\n")
        eval_us, eval_only_us = evaluation(files, routes)
        router_us = asyncio.run(router_path(files, work / "router", routes))
        morph_us = morphs(files, routes)
        rows = [("routing: header read + evaluate 50 routes", eval_us),
                ("routing: evaluate 50 routes (header in memory)", eval_only_us),
                ("routing: whole router path (read, evaluate, commit/32)", router_us),
                ("morph at send time: site profile (set, regex)", morph_us["site"]),
                ("morph at send time: PS3.15 de-identification", morph_us["research"])]
        intake_us = None
        if not args.no_intake:
            plain = [intake(files, work / f"plain{i}", None) for i in range(2)]
            routed = [intake(files, work / f"routed{i}", routes) for i in range(2)]
            intake_us = statistics.median(plain) / len(files) * 1e6
            routed_us = statistics.median(routed) / len(files) * 1e6
            plain_rate = len(files) / statistics.median(plain)
            routed_rate = len(files) / statistics.median(routed)
            print(f"intake storescu -> radflow, no routes : {plain_rate:7.0f}"
                  f" inst/s  ({intake_us / 1000:.2f} ms per instance)")
            print(f"intake storescu -> radflow, 50 routes : {routed_rate:7.0f}"
                  f" inst/s  ({routed_us / 1000:.2f} ms per instance, "
                  f"{(routed_us / intake_us - 1) * 100:+.1f} %)\n")
        width = max(len(r[0]) for r in rows)
        for label, us in rows:
            share = f"  {us / intake_us * 100:5.1f} % of intake" if intake_us else ""
            print(f"{label:<{width}}  {us:8.0f} µs{share}")
        if intake_us:
            print(f"\ntarget: routing < 10 % of intake -> "
                  f"{router_us / intake_us * 100:.1f} % (whole router path)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
