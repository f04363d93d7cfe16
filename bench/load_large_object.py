"""L3 (bounded): one multi-frame object of gigabytes in by C-STORE, out by C-STORE and STOW-RS.

``python bench/load_large_object.py --size-gb 2.5`` writes a multi-frame image of that size
(16-bit 512 x 512 frames, each one different, written a few frames at a time), sends it to
radflow with DCMTK ``storescu``, and lets radflow deliver it to DCMTK ``storescp`` (C-STORE)
and over STOW-RS (a streamed ``multipart/related`` body) to a local STOW-RS sink that writes
each part to disk as it arrives (``--stow orthanc`` sends to Orthanc instead, which holds a
request body in its own memory). ``--spill-dir`` puts the file radflow writes a large
dataset into while it arrives on another file system (``/dev/shm``, a tmpfs, for the "temp
dir on another file system" case); by default it is the spool's own ``tmp/``.

Before anything, free disk is checked (the source file, radflow's spool copy, and the two
received copies: four times the size, plus a margin; ``/dev/shm`` must hold one more copy
with ``--spill-dir`` there); the bench refuses with a message when there is not enough.

Judged against RELIABILITY.md L3: radflow's RSS (VmRSS from /proc, sampled every 0.2 s for the
whole run) stays under 300 MiB; the dataset's SHA-256 is the same at the sender, in radflow's
spool, at ``storescp`` and at the STOW-RS receiver; nothing lost and nothing half-written (the
one checker); the spill file is gone afterwards. ``verdict: PASS``/``FAIL``, exit code 0/1,
``--report FILE`` for the figures as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiohttp import web
from pydicom.uid import ExplicitVRLittleEndian

from bench._reliability import ResourceSampler, Verdict
from bench.soak import _clean_up_on_exit
from tests.helpers import dicomgen
from tests.helpers.invariant import check
from tests.helpers.peers import Orthanc, Storescp, have_orthanc
from tests.helpers.proc import HOST, STORESCU_PROPOSE, RadflowProcess, StorescuRun, free_port

MAX_RSS_MB = 300.0


class StowSink:
    """A STOW-RS endpoint that streams each part of a request to a file of its own."""

    def __init__(self, out: Path) -> None:
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.files: list[Path] = []
        self.requests = 0
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        threading.Thread(target=self._loop.run_forever, name="stow-sink", daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/dicom-web/studies"

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/dicom-web/studies", self._stow)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, HOST, self.port).start()

    async def _stow(self, request: web.Request) -> web.Response:
        self.requests += 1
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            path = self.out / f"part-{time.time_ns()}.dcm"
            with open(path, "wb") as fh:
                while chunk := await part.read_chunk(1 << 20):  # type: ignore[union-attr]
                    fh.write(chunk)
            self.files.append(path)
        return web.json_response({}, content_type="application/dicom+json")

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)


def done_destinations(db: Path) -> set[str]:
    """Destinations whose outbox row is done (the peer answered success)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return {str(r[0]) for r in conn.execute(
            "SELECT destination FROM outbox WHERE state = 'done'")}
    except sqlite3.Error:
        return set()
    finally:
        conn.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-gb", type=float, default=2.5, help="object size (GB, < 4)")
    ap.add_argument("--spill-dir", type=Path, default=None,
                    help="where radflow writes the arriving dataset (e.g. /dev/shm/...)")
    ap.add_argument("--stow", choices=["sink", "orthanc"], default="sink")
    ap.add_argument("--timeout", type=float, default=3600.0, help="for each transfer (s)")
    ap.add_argument("--report", type=Path, help="write the figures and verdict as JSON")
    args = ap.parse_args()

    size = int(args.size_gb * 1e9)
    work = Path(tempfile.mkdtemp(prefix="radflow-l3-"))
    need = size * 4 + 2 * 2**30
    free = shutil.disk_usage(work).free
    if free < need:
        print(f"not enough disk under {work}: {free / 2**30:.1f} GiB free, "
              f"{need / 2**30:.1f} GiB needed (source, spool, two received copies)")
        shutil.rmtree(work, ignore_errors=True)
        return 1
    if args.spill_dir is not None:
        # A folder of this run's own inside the one named (removed at the end).
        args.spill_dir = Path(tempfile.mkdtemp(prefix="radflow-l3-spill-", dir=args.spill_dir))
        spill_free = shutil.disk_usage(args.spill_dir).free
        if spill_free < size * 1.1:
            print(f"not enough room in {args.spill_dir}: {spill_free / 2**30:.1f} GiB free")
            return 1
    if args.stow == "orthanc" and not have_orthanc():
        print("Orthanc with its DICOMweb plugin is not installed; use --stow sink")
        return 1

    pacs = Storescp(work / "pacs", ae_title="PACS").start()
    stow_sink: StowSink | None = None
    orthanc: Orthanc | None = None
    if args.stow == "sink":
        stow_sink = StowSink(work / "stow")
        stow_url = stow_sink.url
    else:
        orthanc = Orthanc(work / "orthanc").start()
        stow_url = orthanc.stow_url
    dicom: dict[str, object] = {"listeners": [{"dimse_timeout": 600, "network_timeout": 600}]}
    if args.spill_dir is not None:
        dicom["spill_dir"] = str(args.spill_dir)
    rf = RadflowProcess(work / "radflow", {
        "dicom": dicom,
        "destinations": {
            "pacs": {"type": "dimse", "host": HOST, "ae_title": "PACS", "port": pacs.port,
                     "idle_close": 1, "timeout": args.timeout},
            "archive": {"type": "dicomweb", "url": stow_url, "timeout": args.timeout},
        },
        "delivery": {"poll_interval": 0.2},
        "logging": {"level": "info"},
    })
    _clean_up_on_exit(rf, pacs)
    (Path(rf.config["routing"]["routes_dir"]) / "10-all.yaml").write_text(
        "version: 1\nroutes:\n  - name: all\n    fallback: true\n"
        "    destinations: [pacs, archive]\n")

    began = time.monotonic()
    inst = dicomgen.write_large_multiframe(work / "source" / "large.dcm", size)
    source_sha = dicomgen.dataset_sha256(inst.path)
    made = time.monotonic() - began
    print(f"wrote {inst.path.stat().st_size / 1e9:.2f} GB in {made:.0f} s", flush=True)

    rf.start(timeout=120)
    assert rf.proc is not None
    sampler = ResourceSampler(rf.proc.pid, interval=0.2).start()
    rss_start = sampler.sample()[0]
    began = time.monotonic()
    run = StorescuRun(rf, [inst.path], "-aet", "MODALITY", "-to", "600", "-ta", "600",
                      "-td", "600", *STORESCU_PROPOSE[ExplicitVRLittleEndian])
    code = run.finish(args.timeout)
    stored_s = time.monotonic() - began
    acked = {inst.sop_instance_uid} if run.acknowledged else set()
    print(f"C-STORE in: {run.responses} in {stored_s:.0f} s", flush=True)

    # Delivered = radflow has the destination's success (storescp answers once its file is
    # written; the STOW-RS sink once its part is on disk): the outbox row is done.
    deadline = time.monotonic() + args.timeout
    pacs_s = stow_s = None
    while time.monotonic() < deadline and acked:
        now = time.monotonic() - began
        done = done_destinations(rf.db_path)
        if pacs_s is None and "pacs" in done:
            pacs_s = now
        if stow_s is None and "archive" in done:
            stow_s = now
        if pacs_s is not None and stow_s is not None:
            break
        time.sleep(1.0)
    time.sleep(2.0)
    sampler.stop()

    shas: dict[str, str] = {"source": source_sha}
    rows = rf.journal_rows()
    if rows:
        shas["spool"] = dicomgen.dataset_sha256(rf.spool_dir / rows[0]["spool_path"])
    received = pacs.received_files()
    if received:
        shas["storescp"] = dicomgen.dataset_sha256(received[0])
    if stow_sink is not None and stow_sink.files:
        shas["stow"] = dicomgen.dataset_sha256(stow_sink.files[0])
    spill_left = sorted((args.spill_dir or rf.spool_dir / "tmp").glob("spill-*"))
    delivered = {"pacs": pacs.received()}
    if orthanc is not None:
        delivered["archive"] = orthanc.received()
    elif stow_sink is not None:
        delivered["archive"] = {inst.sop_instance_uid} if stow_sink.files else set()
    verdict_nl = check(acked, delivered, sent={inst.sop_instance_uid}, rf=rf)

    v = Verdict("L3: a single multi-frame object of gigabytes in and out")
    for name, value in {
        "object_bytes": inst.path.stat().st_size, "frames": size // (512 * 512 * 2),
        "spill_dir": str(args.spill_dir or "spool tmp/"), "stow_receiver": args.stow,
        "storescu_exit": code, "c_store_in_s": round(stored_s, 1),
        "delivered_by_c_store_s": round(pacs_s, 1) if pacs_s is not None else None,
        "delivered_by_stow_s": round(stow_s, 1) if stow_s is not None else None,
        "rss_start_mb": round(rss_start, 1), "rss_max_mb": round(sampler.max_rss, 1),
        "sha256": shas,
    }.items():
        v.figure(name, value)
    v.require("C-STORE acknowledged", bool(acked), run.responses, "Success")
    v.require("RSS throughout", sampler.max_rss < MAX_RSS_MB, f"max {sampler.max_rss:.0f} MiB",
              f"< {MAX_RSS_MB:.0f} MiB")
    expected = {"source", "spool", "storescp"} | ({"stow"} if stow_sink else set())
    v.require("SHA-256 equal end to end",
              set(shas) >= expected and len(set(shas.values())) == 1,
              ", ".join(f"{k} {h[:12]}" for k, h in shas.items()), "one digest everywhere")
    v.require("nothing lost, nothing half-written", verdict_nl.ok,
              "ok" if verdict_nl.ok else verdict_nl.report().replace("\n", "; "),
              "acked ⊆ delivered")
    v.require("no spill file left", not spill_left, [p.name for p in spill_left], "none")
    result = v.finish(args.report, {"resource_samples": sampler.samples})
    rf.stop(timeout=120)
    pacs.stop()
    if stow_sink is not None:
        stow_sink.stop()
    if orthanc is not None:
        orthanc.stop()
    if result == 0:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"kept for inspection: {work}")
    if args.spill_dir is not None:
        shutil.rmtree(args.spill_dir, ignore_errors=True)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
