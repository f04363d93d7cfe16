"""A NUL character inside a text value (never valid in DICOM or HL7 text, but senders make
mistakes) is stored on both backends rather than failing the commit: PostgreSQL's text type
cannot hold NUL, so its copy leaves the character out. A failed commit would be answered as
"out of resources, try again" and the sender would retry the same bad object for ever."""

from __future__ import annotations

import dataclasses
from typing import Any

from journal_samples import record

from engine.durable.store import DuplicatePolicy, InstanceCommit, InstanceOutcome


async def test_an_instance_with_nul_in_its_header_copies_is_stored(store: Any) -> None:
    bad = dataclasses.replace(record(1), patient_id="PID\x00001", accession_number="ACC\x00")
    (result,) = await store.commit_instances([InstanceCommit(bad, DuplicatePolicy.REJECT)])
    assert result.outcome is InstanceOutcome.STORED
    stored = await store.get_instance(bad.sop_instance_uid)
    assert stored is not None
    assert stored.record.patient_id.replace("\x00", "") == "PID001"
    # the next instance, without NUL, takes the usual path on the same connection
    (again,) = await store.commit_instances([InstanceCommit(record(2), DuplicatePolicy.REJECT)])
    assert again.outcome is InstanceOutcome.STORED
