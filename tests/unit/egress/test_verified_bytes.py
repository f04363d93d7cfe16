"""Bytes on the way out are the bytes taken in: size and SHA-256 against the row's record."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from engine.egress.delivery import DicomObject
from engine.egress.errors import IntegrityFailure, PermanentDeliveryError
from engine.egress.objects import verified_bytes

CT = "1.2.840.10008.5.1.4.1.1.2"
ELE = "1.2.840.10008.1.2.1"


def obj(rel: str, data: bytes, **changes: object) -> DicomObject:
    fields: dict[str, object] = {"size_bytes": len(data),
                                 "sha256": hashlib.sha256(data).hexdigest()}
    fields.update(changes)
    return DicomObject(rel, ELE, CT, "1.2.3.4", **fields)  # type: ignore[arg-type]


def test_an_intact_file_is_returned_whole(tmp_path: Path) -> None:
    (tmp_path / "a.dcm").write_bytes(b"DICM" * 100)
    assert verified_bytes(obj("a.dcm", b"DICM" * 100), tmp_path) == b"DICM" * 100


@pytest.mark.parametrize("damage", ["flip", "truncate", "grow"])
def test_a_damaged_file_is_an_integrity_failure_with_both_digests(tmp_path: Path,
                                                                   damage: str) -> None:
    original = bytes(range(256)) * 4
    found = {"flip": original[:-1] + b"\x00", "truncate": original[:100],
             "grow": original + b"x"}[damage]
    (tmp_path / "a.dcm").write_bytes(found)
    with pytest.raises(IntegrityFailure) as info:
        verified_bytes(obj("a.dcm", original), tmp_path)
    err = info.value
    assert err.reason == "integrity_failed" and not err.transient and not err.reached_peer
    assert hashlib.sha256(original).hexdigest() in str(err)
    assert hashlib.sha256(found).hexdigest() in str(err)


def test_a_row_without_a_record_is_sent_unchecked(tmp_path: Path) -> None:
    (tmp_path / "a.dcm").write_bytes(b"abc")
    assert verified_bytes(obj("a.dcm", b"abc", size_bytes=None, sha256=None), tmp_path) == b"abc"


def test_a_missing_file_is_permanent(tmp_path: Path) -> None:
    with pytest.raises(PermanentDeliveryError) as info:
        verified_bytes(obj("gone.dcm", b"abc"), tmp_path)
    assert info.value.reason == "spool_missing"
