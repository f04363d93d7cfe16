"""The classification tables: each protocol answer falls on the side the standards put it."""

from __future__ import annotations

import pytest

from engine.egress.classify import (
    Verdict,
    classify_dimse,
    classify_hl7_ack,
    classify_http,
    classify_stow_failure,
)

D, T, P = Verdict.DELIVERED, Verdict.TRANSIENT, Verdict.PERMANENT


@pytest.mark.parametrize(("status", "verdict"), [
    (0x0000, D),  # Success
    (0xB000, D), (0xB006, D), (0xB007, D),  # Warnings: coercion, elements discarded, mismatch
    (0x0107, D), (0x0116, D),  # N-service warnings
    (0xA700, T), (0xA7FF, T), (0xA701, T),  # Out of Resources
    (0x0110, T),  # Processing failure (the SCP's own trouble)
    (0x0213, T),  # Resource limitation
    (0xA900, P), (0xA9FF, P),  # Data set does not match SOP class
    (0xC000, P), (0xC123, P),  # Cannot understand
    (0x0122, P),  # SOP class not supported
    (0x0124, P),  # Not authorized
    (0x0111, P),  # Duplicate SOP instance (a different object with this UID is there)
    (0x0112, P), (0x0106, P), (0x0120, P), (0xC310, P),
    (0xDEAD, T),  # unknown: retry (never lose an instance), dead-letter by policy
])
def test_dimse_statuses(status: int, verdict: Verdict) -> None:
    assert classify_dimse(status) is verdict


@pytest.mark.parametrize(("status", "verdict"), [
    (200, D), (202, D), (204, D),
    (400, P), (404, P), (409, P), (413, P), (415, P), (422, P),
    (408, T), (429, T), (500, T), (502, T), (503, T), (504, T),
    (401, T), (403, T),  # credentials: an operator fixes the config, the queue waits
])
def test_stow_http_statuses(status: int, verdict: Verdict) -> None:
    assert classify_http(status, api="stow") is verdict


def test_fhir_409_is_a_version_conflict_worth_retrying() -> None:
    assert classify_http(409, api="fhir") is T
    assert classify_http(412, api="fhir") is P  # several resources match the condition
    assert classify_http(201, api="fhir") is D


@pytest.mark.parametrize(("reason", "verdict"), [
    (0xA700, T), (0x0110, T), (0xA900, P), (0xC000, P), (0x0122, P), (0, T)])
def test_stow_failure_reasons(reason: int, verdict: Verdict) -> None:
    assert classify_stow_failure(reason) is verdict


@pytest.mark.parametrize(("code", "verdict"), [
    ("AA", D), ("CA", D), ("aa ", D),
    ("AE", P), ("CE", P),  # content refused: dead letter by default
    ("AR", T), ("CR", T),  # cannot take it now: retry by default
    ("XX", T), ("", T)])
def test_hl7_acks_default_policy(code: str, verdict: Verdict) -> None:
    assert classify_hl7_ack(code) is verdict


def test_hl7_ack_policy_is_configurable() -> None:
    assert classify_hl7_ack("AE", on_application_error="retry") is T
    assert classify_hl7_ack("AR", on_application_reject="dead_letter") is P
