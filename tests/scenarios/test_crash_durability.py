"""Durability of C-STORE intake across a crash (SIGKILL) and a graceful stop (SIGTERM).

The promise under test (DESIGN.md, D1): a Success status is sent only after the instance's bytes
and its journal row are durable. So whatever instant radflow dies at, every instance storescu saw
Success for is, after a restart on the same data, in the journal and in the spool, readable, with
the same SOP Instance UID and the very bytes that were sent; no half-written temp file survives
the restart; and the restarted engine takes the rest. On SIGTERM radflow lets the running
association finish (within its grace period), exits 0, and keeps everything it acknowledged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pytest

from tests.helpers import dicomgen
from tests.helpers.proc import (
    STORESCU_PROPOSE,
    RadflowFactory,
    RadflowProcess,
    StorescuRun,
    store_responses,
    storescu,
)

pytestmark = [pytest.mark.dcmtk, pytest.mark.timeout(180)]

FILES = 300
ARGS = STORESCU_PROPOSE[dicomgen.TRANSFER_SYNTAXES["explicit_le"]]


def assert_acknowledged_are_kept(rf: RadflowProcess, sent: dict[Path, dicomgen.Instance],
                                 acknowledged: list[Path]) -> None:
    """Each acknowledged file is in the journal and the spool, readable, with its bytes."""
    rows = {str(r["sop_instance_uid"]): r for r in rf.journal_rows()}
    missing = [p.name for p in acknowledged if sent[p].sop_instance_uid not in rows]
    assert missing == [], f"{len(missing)} acknowledged instances are not in the journal"
    for path in acknowledged:
        inst = sent[path]
        stored = rf.spool_dir / str(rows[inst.sop_instance_uid]["spool_path"])
        assert stored.is_file(), f"{path.name}: journal row without its spool file"
        ds = pydicom.dcmread(stored)
        assert ds.SOPInstanceUID == inst.sop_instance_uid
        assert dicomgen.dataset_bytes(stored) == dicomgen.dataset_bytes(path)


def assert_spool_matches_journal(rf: RadflowProcess) -> None:
    """No temp files, and exactly one spool object per journal row (no orphans, no holes)."""
    assert rf.spool_temp_files() == []
    assert sorted(rf.spool_objects()) == sorted(
        rf.spool_dir / str(r["spool_path"]) for r in rf.journal_rows())


def test_sigkill_mid_transfer_loses_nothing_acknowledged(
        radflow: RadflowFactory, dicom_dir: Path, storage_overrides: dict[str, Any]) -> None:
    rf = radflow({"storage": storage_overrides})
    instances = dicomgen.write_series(dicom_dir, FILES)
    sent = {inst.path: inst for inst in instances}

    run = StorescuRun(rf, list(sent), *ARGS)
    reached = run.wait_acknowledged(FILES // 3)
    rf.kill()
    run.finish()
    acknowledged = list(run.acknowledged)
    assert reached >= FILES // 3, run.text()[-2000:]
    assert 0 < len(acknowledged) < FILES, "radflow was not killed in the middle of the transfer"

    rf.restart()
    assert_acknowledged_are_kept(rf, sent, acknowledged)
    assert_spool_matches_journal(rf)
    # Rows the kill left "not durable" (file fsync'd beside the commit, mark not yet written)
    # had their files checked at the start, before any listener opened.
    assert [r["id"] for r in rf.journal_rows() if r["durable"] != 1] == []

    # The restarted engine takes the rest (an instance committed just before the kill, whose
    # answer never arrived, is an identical resend: Success, and still one row).
    rest = [p for p in sent if p not in set(acknowledged)]
    result = storescu(rf, rest, *ARGS)
    assert store_responses(result.stdout) == ["Success"] * len(rest), result.stdout[-2000:]
    rows = rf.journal_rows()
    assert sorted(str(r["sop_instance_uid"]) for r in rows) == sorted(
        i.sop_instance_uid for i in instances)
    assert {r["version"] for r in rows} == {1}
    assert_acknowledged_are_kept(rf, sent, list(sent))
    assert_spool_matches_journal(rf)
    rf.stop()


def test_sigterm_mid_transfer_exits_cleanly_and_keeps_what_it_acknowledged(
        radflow: RadflowFactory, dicom_dir: Path) -> None:
    rf = radflow()
    instances = dicomgen.write_series(dicom_dir, FILES)
    sent = {inst.path: inst for inst in instances}

    run = StorescuRun(rf, list(sent), *ARGS)
    run.wait_acknowledged(FILES // 6)
    assert rf.stop() == 0  # SIGTERM; stop() waits (bounded) and checks the exit code
    run.finish()
    acknowledged = list(run.acknowledged)
    assert acknowledged, run.text()[-2000:]

    assert rf.events("engine.stopping") and rf.events("engine.stopped")
    assert_acknowledged_are_kept(rf, sent, acknowledged)
    assert_spool_matches_journal(rf)
    # The association that was running when SIGTERM came was allowed to finish: nothing it sent
    # was refused, and every store either succeeded or was never answered.
    assert all(status == "Success" for status in run.responses), run.responses

    rf.restart()
    assert rf.api_instances()["total"] == len(rf.journal_rows()) >= len(acknowledged)
