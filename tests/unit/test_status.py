"""The one table from engine exceptions to C-STORE statuses, and the Error Comment text."""

from __future__ import annotations

import pytest
from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS, code_to_category

from engine import errors
from engine.bridge import BridgeMisuse
from engine.status import AckCode, DimseStatus, c_store_status_for, error_comment

C_STORE_TABLE = [
    # a different instance under a known SOP Instance UID, refused by policy
    (errors.DuplicateRejected("dup"), DimseStatus.DUPLICATE_SOP_INSTANCE, 0x0111),
    (errors.SopClassMismatch("class"), DimseStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS, 0xA900),
    # permanent for this input: the peer must not resend it unchanged
    (errors.MalformedDataset("truncated"), DimseStatus.CANNOT_UNDERSTAND, 0xC000),
    (errors.InvalidIdentifier("uid"), DimseStatus.CANNOT_UNDERSTAND, 0xC000),
    (errors.InvalidInput("input"), DimseStatus.CANNOT_UNDERSTAND, 0xC000),
    # transient: the peer keeps the instance and retries
    (errors.OutOfResources("disk"), DimseStatus.OUT_OF_RESOURCES, 0xA700),
    (errors.StorageFailure("commit"), DimseStatus.OUT_OF_RESOURCES, 0xA700),
    (errors.BridgeTimeout("slow"), DimseStatus.OUT_OF_RESOURCES, 0xA700),
    (errors.ShuttingDown("bye"), DimseStatus.OUT_OF_RESOURCES, 0xA700),
    (errors.TransientError("later"), DimseStatus.OUT_OF_RESOURCES, 0xA700),
    # anything unexpected: the safe direction is "keep it and retry"
    (BridgeMisuse("misuse"), DimseStatus.OUT_OF_RESOURCES, 0xA700),
    (errors.ConfigError("config"), DimseStatus.OUT_OF_RESOURCES, 0xA700),
    (errors.RadflowError("radflow"), DimseStatus.OUT_OF_RESOURCES, 0xA700),
    (OSError(5, "Input/output error"), DimseStatus.OUT_OF_RESOURCES, 0xA700),
    (RuntimeError("bug"), DimseStatus.OUT_OF_RESOURCES, 0xA700),
    (KeyError("bug"), DimseStatus.OUT_OF_RESOURCES, 0xA700),
]


@pytest.mark.parametrize(
    ("exc", "status", "code"), C_STORE_TABLE, ids=[type(e).__name__ for e, _, _ in C_STORE_TABLE]
)
def test_c_store_status_for_each_error(exc: BaseException, status: DimseStatus, code: int) -> None:
    assert c_store_status_for(exc) is status
    assert int(status) == code


@pytest.mark.parametrize(
    "exc", [e for e, _, _ in C_STORE_TABLE], ids=[type(e).__name__ for e, _, _ in C_STORE_TABLE]
)
def test_every_c_store_answer_is_a_storage_failure_pynetdicom_knows(exc: BaseException) -> None:
    code = int(c_store_status_for(exc))
    assert code in STORAGE_SERVICE_CLASS_STATUS
    assert code_to_category(code) == "Failure"


def test_a_subclass_maps_like_its_base() -> None:
    class DiskGone(errors.OutOfResources):
        pass

    class BadPixels(errors.MalformedDataset):
        pass

    assert c_store_status_for(DiskGone()) is DimseStatus.OUT_OF_RESOURCES
    assert c_store_status_for(BadPixels()) is DimseStatus.CANNOT_UNDERSTAND


def test_every_engine_error_class_has_a_distinct_reason() -> None:
    classes = [
        errors.ConfigError,
        errors.TransientError,
        errors.ShuttingDown,
        errors.BridgeTimeout,
        errors.OutOfResources,
        errors.StorageFailure,
        errors.InvalidInput,
        errors.MalformedDataset,
        errors.InvalidIdentifier,
        errors.SopClassMismatch,
        errors.DuplicateRejected,
        BridgeMisuse,
    ]
    reasons = [cls.reason for cls in classes]
    assert len(set(reasons)) == len(reasons)
    assert all(issubclass(cls, errors.RadflowError) for cls in classes)


def test_status_codes_match_the_standard() -> None:
    assert DimseStatus.SUCCESS == 0x0000
    assert DimseStatus.PENDING == 0xFF00
    assert DimseStatus.CANCEL == 0xFE00
    assert code_to_category(int(DimseStatus.SUCCESS)) == "Success"
    assert code_to_category(int(DimseStatus.PENDING)) == "Pending"
    assert code_to_category(int(DimseStatus.CANCEL)) == "Cancel"
    assert [a.value for a in AckCode] == ["AA", "AE", "AR", "CA", "CE", "CR"]


@pytest.mark.parametrize(
    "exc",
    [
        errors.MalformedDataset("x" * 500),
        errors.StorageFailure("journal commit failed: " + "database is locked " * 10),
        errors.OutOfResources("spool below its free-space threshold (12 MiB free)"),
        errors.BridgeTimeout(),
        RuntimeError(),
        ValueError("é" * 100),
    ],
)
def test_error_comment_is_a_short_non_empty_lo(exc: BaseException) -> None:
    comment = error_comment(exc)
    assert 0 < len(comment) <= 64  # Error Comment (0000,0902) is LO
    assert comment == (str(exc) or type(exc).__name__)[:64]


def test_error_comment_names_the_error_when_it_has_no_message() -> None:
    assert error_comment(errors.BridgeTimeout()) == "BridgeTimeout"
