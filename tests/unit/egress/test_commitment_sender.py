"""The commitment report sender's choice of association: a report claimed while the N-ACTION
response is still being sent waits for it (not an attempt), then goes on that association."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace
from typing import Any

from engine.dicom.associations import OpenAssociations
from engine.durable.commitment import CommitmentReport
from engine.egress.commitment import CommitmentSender
from engine.egress.delivery import Delivery
from engine.egress.errors import NotHereDeliveryError
from engine.settings import CommitmentReports

PUSH = "1.2.840.10008.1.20.1"


def _delivery(owner: str) -> Delivery:
    report = CommitmentReport("1.2.3.4", "CT_1", (("1.2.840.10008.5.1.4.1.1.2", "1.2.3.5"),),
                              (), via=owner)
    return Delivery(row_id=1, destination="commitment", kind="commitment",
                    payload=json.loads(report.payload()), attempt=1, created_at=time.time())


def _assoc() -> Any:
    return SimpleNamespace(is_established=True,
                           accepted_contexts=[SimpleNamespace(abstract_syntax=PUSH)])


def test_a_report_claimed_before_the_response_left_waits_for_it() -> None:
    associations = OpenAssociations(owner="w0")
    sender = CommitmentSender("commitment", CommitmentReports(), associations)
    assoc = _assoc()
    associations.answering("CT_1", assoc)
    assert associations.is_answering("CT_1")
    assert associations.find("CT_1", PUSH) is None  # not offered before its response
    outcome = sender._send_one(_delivery("w0"))
    assert isinstance(outcome.error, NotHereDeliveryError)
    associations.add("CT_1", assoc)  # the response went out
    assert not associations.is_answering("CT_1")
    assert associations.find("CT_1", PUSH) is assoc


def test_a_closed_association_is_no_longer_answering() -> None:
    associations = OpenAssociations(owner="w0")
    assoc = _assoc()
    associations.answering("CT_1", assoc)
    associations.remove(assoc)
    assert not associations.is_answering("CT_1")
    other = _assoc()
    associations.answering("CT_1", other)
    other.is_established = False  # aborted before its response: nothing to wait for
    assert not associations.is_answering("CT_1")
