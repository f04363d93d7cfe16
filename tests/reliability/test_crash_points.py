"""F2 (and F1, F4): radflow killed at each named crash point, then restarted; nothing acked is lost.

``engine.crashpoints`` ends the process with ``os._exit`` (as abrupt as ``kill -9``) the n-th
time it passes a point: received → written → fsync → commit → response (intake, on the
association's thread), routed → enqueued (router), sent → peer_ack → dequeued (dispatcher).
storescu sends a series; the engine dies at the point; the sender resends what was not
acknowledged after a restart, as a modality does. Then the one checker
(:mod:`tests.helpers.invariant`) must pass: every acknowledged SOP Instance UID at both
destinations (``pacs`` and ``ai``, storescp sinks), nothing foreign there, nothing half-written
in the spool or journal.

Power loss (no VM reset or dm-flakey here) is modelled by ``RADFLOW_CRASH_POWERLOSS``: the crash
also deletes every spool file whose bytes or directory entry were not fsync'd. The same run with
``RADFLOW_FSYNC_STUB=1`` (fsync a no-op) must make the checker fail: proof that it can.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.crashpoints import CRASH_EXIT_CODE, POINTS
from tests.helpers import dicomgen
from tests.helpers.invariant import assert_nothing_lost, check
from tests.helpers.peers import Storescp
from tests.helpers.proc import (
    STORESCU_PROPOSE,
    RadflowProcess,
    StorescuRun,
    store_responses,
    storescu,
)

pytestmark = [pytest.mark.dcmtk, pytest.mark.timeout(120)]

FILES = 8
ARGS = STORESCU_PROPOSE[dicomgen.TRANSFER_SYNTAXES["explicit_le"]]
#: intake points are passed once per instance: crash in the middle of the series; the router
#: and dispatcher work in batches, so their first pass is the one to hit
HIT = {"received": 4, "written": 4, "fsync": 4, "commit": 4, "response": 4}


def crash_run(rf: RadflowProcess, files: list[Path], point: str, **env: str) -> list[Path]:
    """Start ``rf`` armed to crash at ``point``, send ``files``; the acknowledged ones."""
    rf.env = {"RADFLOW_CRASH_AT": f"{point}:{HIT.get(point, 1)}", **env}
    rf.start()
    run = StorescuRun(rf, files, *ARGS)
    run.finish(60)
    assert rf.proc is not None
    code = rf.proc.wait(30)
    assert code == CRASH_EXIT_CODE, f"radflow did not crash at {point}\n{rf.diagnostics()}"
    rf.env = {}
    return list(run.acknowledged)


def resend_and_check(rf: RadflowProcess, sinks: dict[str, Storescp],
                     instances: list[dicomgen.Instance], acked_before: list[Path]) -> None:
    rf.start()
    # The modality resends what it got no Success for (an identical resend of an instance
    # committed just before the crash is answered Success again, and stays one instance).
    rest = [i.path for i in instances if i.path not in set(acked_before)]
    if rest:
        result = storescu(rf, rest, *ARGS)
        assert store_responses(result.stdout) == ["Success"] * len(rest), result.stdout[-2000:]
    uids = dicomgen.sop_instance_uids(instances)
    for sink in sinks.values():
        sink.wait_for(uids, timeout=60)
    assert_nothing_lost(uids, {name: s.received() for name, s in sinks.items()}, rf=rf)
    assert rf.events("engine.started", current_run=True)


@pytest.mark.parametrize("point", POINTS)
def test_kill_at_each_crash_point_loses_nothing_acknowledged(fanout, dicom_dir: Path,
                                                             point: str) -> None:
    rf, sinks = fanout(start=False)
    instances = dicomgen.write_series(dicom_dir, FILES)
    acked = crash_run(rf, [i.path for i in instances], point)
    if point in HIT:
        assert 0 < len(acked) < FILES, f"crash at {point} was not mid-series: {len(acked)} acked"
    resend_and_check(rf, sinks, instances, acked)


@pytest.mark.parametrize("point", ["response", "routed", "sent"])
def test_power_loss_at_a_crash_point_loses_nothing_acknowledged(fanout, dicom_dir: Path,
                                                                point: str) -> None:
    rf, sinks = fanout(start=False)
    instances = dicomgen.write_series(dicom_dir, FILES)
    acked = crash_run(rf, [i.path for i in instances], point,
                      RADFLOW_CRASH_POWERLOSS=str(rf.spool_dir))
    if point in HIT:
        assert acked, "nothing was acknowledged before the power cut"
    # (routing and delivery may run before storescu reads its first answer: then the cut
    # comes before any acknowledgement, and the resend below carries the whole series)
    # On disk, straight after the power cut: every journal row still has its whole object
    # (files not committed yet may be left over; the next start removes them, checked below).
    verdict = check((), {}, rf=rf)
    assert [h for h in verdict.half_written if h.startswith("journal row")] == [], \
        verdict.report()
    resend_and_check(rf, sinks, instances, acked)


def test_with_fsync_stubbed_out_the_checker_fails(fanout, dicom_dir: Path) -> None:
    """The suite can fail: without fsync, a power cut takes acknowledged instances with it."""
    rf, _ = fanout(start=False)
    instances = dicomgen.write_series(dicom_dir, FILES)
    acked = crash_run(rf, [i.path for i in instances], "response",
                      RADFLOW_CRASH_POWERLOSS=str(rf.spool_dir), RADFLOW_FSYNC_STUB="1")
    assert acked
    verdict = check((), {}, rf=rf)
    assert not verdict.ok
    assert any("without its object" in item for item in verdict.half_written), verdict.report()
