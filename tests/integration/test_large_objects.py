"""An object larger than radflow should hold in memory: in by C-STORE, out by C-STORE and by
STOW-RS, never held whole, the same bytes everywhere.

A 150 MB multi-frame image (above the 64 MB at which delivery streams from the spool file, and
above this test's 8 MB intake threshold) goes in with DCMTK ``storescu`` and out to DCMTK
``storescp`` and to Orthanc over STOW-RS. What a user checks: Success; the dataset's SHA-256
equal at the sender, in the spool, at ``storescp`` and in Orthanc; no file left in the spill
folder; and radflow's resident memory, read from /proc while the object passes, never grows by
as much as the object (holding it whole once, as a ``BytesIO`` does, would).
A transfer cut off (A-ABORT) after the dataset went to its file leaves that file nowhere.
``bench/load_large_object.py`` runs the same path at 2.5 GB.
"""

from __future__ import annotations

import threading
import urllib.request
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian

from tests.helpers import dicomgen
from tests.helpers.invariant import assert_nothing_lost
from tests.helpers.peers import Orthanc, Storescp, have_orthanc, have_storescp
from tests.helpers.proc import HOST, STORESCU_PROPOSE, RadflowFactory, store_responses, storescu
from tests.helpers.scu import association, send_partial_then_quit

pytestmark = [pytest.mark.dcmtk, pytest.mark.orthanc, pytest.mark.timeout(600)]

SIZE = 150 * 1024 * 1024


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class PeakRss:
    """radflow's highest RSS (MiB) while the object passes, sampled every 20 ms."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_mib(self.pid))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def orthanc_file(orthanc: Orthanc, sop_instance_uid: str, out: Path) -> Path:
    found = orthanc.post("/tools/find", {"Level": "Instance",
                                         "Query": {"SOPInstanceUID": sop_instance_uid}})
    assert len(found) == 1, found
    url = f"http://{HOST}:{orthanc.http_port}/instances/{found[0]}/file"
    with urllib.request.urlopen(url, timeout=120) as resp, open(out, "wb") as fh:
        while piece := resp.read(1 << 20):
            fh.write(piece)
    return out


def test_a_large_object_passes_without_being_held_whole(radflow: RadflowFactory,
                                                        tmp_path: Path) -> None:
    if not (have_storescp() and have_orthanc()):
        pytest.skip("needs DCMTK storescp and Orthanc with its DICOMweb plugin")
    pacs = Storescp(tmp_path / "pacs", ae_title="PACS").start()
    orthanc = Orthanc(tmp_path / "orthanc").start()
    try:
        rf = radflow({
            "dicom": {"spill_threshold_mb": 8},
            "destinations": {
                "pacs": {"type": "dimse", "host": HOST, "ae_title": "PACS", "port": pacs.port,
                         "idle_close": 1},
                "archive": {"type": "dicomweb", "url": orthanc.stow_url, "timeout": 300},
            },
            "delivery": {"poll_interval": 0.1},
        }, start=False)
        (Path(rf.config["routing"]["routes_dir"]) / "10-all.yaml").write_text(
            "version: 1\nroutes:\n  - name: all\n    fallback: true\n"
            "    destinations: [pacs, archive]\n")
        rf.start()
        assert rf.proc is not None
        inst = dicomgen.write_large_multiframe(tmp_path / "large.dcm", SIZE)
        source = dicomgen.dataset_sha256(inst.path)
        baseline = rss_mib(rf.proc.pid)

        with PeakRss(rf.proc.pid) as rss:
            result = storescu(rf, inst.path, *STORESCU_PROPOSE[ExplicitVRLittleEndian],
                              timeout=300)
            assert store_responses(result.stdout) == ["Success"], result.stdout[-2000:]
            assert not pacs.wait_for({inst.sop_instance_uid}, timeout=300)
            for _ in range(300):
                if orthanc.get("/statistics")["CountInstances"] >= 1:
                    break
                threading.Event().wait(1.0)

        (row,) = rf.journal_rows()
        assert dicomgen.dataset_sha256(rf.spool_dir / row["spool_path"]) == source
        assert not rf.spool_temp_files()  # the spill file went with the C-STORE
        (received,) = pacs.received_files()
        assert dicomgen.dataset_sha256(received) == source
        stowed = orthanc_file(orthanc, inst.sop_instance_uid, tmp_path / "from-orthanc.dcm")
        assert dicomgen.dataset_sha256(stowed) == source
        assert_nothing_lost({inst.sop_instance_uid},
                            {"pacs": pacs.received(), "archive": orthanc.received()}, rf=rf)
        grown = rss.peak - baseline
        assert grown < SIZE / 2**20 / 2, \
            f"RSS grew {grown:.0f} MiB while a {SIZE >> 20} MiB object passed " \
            f"({baseline:.0f} -> {rss.peak:.0f} MiB): it was held whole somewhere"
    finally:
        pacs.stop()
        orthanc.stop()


def test_a_large_transfer_cut_off_leaves_no_file_behind(radflow: RadflowFactory,
                                                        tmp_path: Path) -> None:
    rf = radflow({"dicom": {"spill_threshold_mb": 1}})
    inst = dicomgen.write_large_multiframe(tmp_path / "large.dcm", 3 * 1024 * 1024)
    with association(rf, [(inst.sop_class_uid, [ExplicitVRLittleEndian])]) as assoc:
        total = send_partial_then_quit(assoc, inst.path, inst.sop_class_uid,
                                       inst.sop_instance_uid, fragments=8, how="abort")
    assert total > 8  # cut off with most of the dataset sent: past the 1 MB threshold
    event = rf.wait_for_event("ingress.dimse.c_store.partial_discarded", timeout=30)
    assert event["bytes"] > 1024 * 1024
    assert not rf.spool_temp_files() and not rf.journal_rows()
