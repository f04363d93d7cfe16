"""C-ECHO and C-STORE into a real radflow process, sent by DCMTK's echoscu and storescu.

What a user checks after sending images: the SCU saw Success, each instance is in the spool and
in the journal (API and SQLite), the stored file is a proper Part 10 file that holds the dataset
bytes exactly as they were sent (no re-encoding, whatever the transfer syntax), duplicates follow
the configured policy, and ``/metrics`` counts what was received.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.filereader import read_file_meta_info

from tests.helpers import dicomgen
from tests.helpers.proc import (
    STORESCU_PROPOSE,
    RadflowFactory,
    RadflowProcess,
    echoscu,
    store_responses,
    storescu,
    storescu_conversions,
)

pytestmark = [pytest.mark.dcmtk, pytest.mark.timeout(120)]

RECEIVED = "radflow_dimse_instances_received_total"


def rows_by_uid(rf: RadflowProcess) -> dict[str, list[dict[str, object]]]:
    out: dict[str, list[dict[str, object]]] = {}
    for row in rf.journal_rows():
        out.setdefault(str(row["sop_instance_uid"]), []).append(row)
    return out


def stored_path(rf: RadflowProcess, row: dict[str, object]) -> Path:
    return rf.spool_dir / str(row["spool_path"])


def test_echo_succeeds(radflow: RadflowFactory) -> None:
    rf = radflow()
    result = echoscu(rf)
    assert result.returncode == 0, result.stdout
    assert rf.metric("radflow_dimse_echoes_total") == 1


def test_store_many_files_lands_in_spool_and_journal(radflow: RadflowFactory,
                                                     dicom_dir: Path) -> None:
    rf = radflow()
    first = dicomgen.write_series(dicom_dir / "ct", 12, modality="CT")
    second = dicomgen.write_series(dicom_dir / "mr", 8, modality="MR")
    assert rf.metric(RECEIVED) == 0

    result = storescu(rf, [i.path for i in first], *STORESCU_PROPOSE[first[0].transfer_syntax_uid])
    assert result.returncode == 0, result.stdout
    assert store_responses(result.stdout) == ["Success"] * len(first)
    assert rf.metric(RECEIVED) == len(first)

    result = storescu(rf, [i.path for i in second],
                      *STORESCU_PROPOSE[second[0].transfer_syntax_uid])
    assert store_responses(result.stdout) == ["Success"] * len(second)
    assert rf.metric(RECEIVED) == len(first) + len(second)

    sent = {i.sop_instance_uid: i for i in [*first, *second]}
    api = rf.api_instances()
    assert api["total"] == len(sent)
    assert {item["sop_instance_uid"] for item in api["items"]} == set(sent)

    rows = rf.journal_rows()
    assert {r["sop_instance_uid"] for r in rows} == set(sent)
    assert len(rows) == len(sent)
    for row in rows:
        path = stored_path(rf, row)
        data = path.read_bytes()
        assert row["size_bytes"] == len(data)
        assert row["sha256"] == hashlib.sha256(data).hexdigest()
        assert row["version"] == 1
        assert row["calling_ae"] == "STORESCU"
        assert row["sop_class_uid"] == sent[str(row["sop_instance_uid"])].sop_class_uid
    assert sorted(rf.spool_objects()) == sorted(stored_path(rf, r) for r in rows)
    assert rf.spool_temp_files() == []


@pytest.mark.parametrize("ts_name", list(dicomgen.TRANSFER_SYNTAXES))
def test_stored_file_holds_the_sent_bytes(radflow: RadflowFactory, dicom_dir: Path,
                                          ts_name: str) -> None:
    transfer_syntax = dicomgen.TRANSFER_SYNTAXES[ts_name]
    rf = radflow()
    sent = dicomgen.write_series(dicom_dir, 3, transfer_syntax)

    result = storescu(rf, [i.path for i in sent], *STORESCU_PROPOSE[transfer_syntax])
    assert store_responses(result.stdout) == ["Success"] * len(sent), result.stdout
    # storescu sent each file in its own transfer syntax: what it sent is the file's dataset.
    conversions = storescu_conversions(result.stdout)
    assert len(conversions) == len(sent)
    assert all(source == target for source, target in conversions), conversions

    rows = rows_by_uid(rf)
    for inst in sent:
        (row,) = rows[inst.sop_instance_uid]
        assert row["transfer_syntax_uid"] == transfer_syntax
        path = stored_path(rf, row)
        data = path.read_bytes()
        assert data[:128] == b"\x00" * 128
        assert data[128:132] == b"DICM"
        meta = read_file_meta_info(path)
        assert meta.TransferSyntaxUID == transfer_syntax
        assert meta.MediaStorageSOPInstanceUID == inst.sop_instance_uid
        assert meta.MediaStorageSOPClassUID == inst.sop_class_uid
        # Byte for byte: the dataset after the meta group is what was sent.
        assert dicomgen.dataset_bytes(path) == dicomgen.dataset_bytes(inst.path)

        stored = pydicom.dcmread(path)
        source = pydicom.dcmread(inst.path)
        assert stored.SOPInstanceUID == inst.sop_instance_uid
        assert stored.file_meta.TransferSyntaxUID == transfer_syntax
        assert np.array_equal(stored.pixel_array, source.pixel_array)


@pytest.mark.parametrize("policy", ["version", "ignore", "reject"])
def test_identical_resend_succeeds_and_is_kept_once(radflow: RadflowFactory, dicom_dir: Path,
                                                    policy: str) -> None:
    rf = radflow({"dicom": {"duplicate_policy": policy}})
    inst = dicomgen.write_instance(dicom_dir)
    args = STORESCU_PROPOSE[inst.transfer_syntax_uid]

    for _ in range(2):
        result = storescu(rf, inst.path, *args)
        assert store_responses(result.stdout) == ["Success"], result.stdout

    rows = rf.journal_rows()
    assert [(r["sop_instance_uid"], r["version"]) for r in rows] == [(inst.sop_instance_uid, 1)]
    assert len(rf.spool_objects()) == 1
    assert rf.api_instances()["total"] == 1
    assert rf.events("ingress.dimse.c_store.duplicate", outcome="identical")


def _same_uid_different_content(dicom_dir: Path) -> tuple[dicomgen.Instance, dicomgen.Instance]:
    original = dicomgen.write_instance(dicom_dir / "v1", seed=1)
    changed = dicomgen.write_instance(dicom_dir / "v2", seed=2,
                                      sop_instance_uid=original.sop_instance_uid)
    assert dicomgen.dataset_bytes(original.path) != dicomgen.dataset_bytes(changed.path)
    return original, changed


def test_changed_content_with_version_policy_keeps_both(radflow: RadflowFactory,
                                                        dicom_dir: Path) -> None:
    rf = radflow({"dicom": {"duplicate_policy": "version"}})
    original, changed = _same_uid_different_content(dicom_dir)
    args = STORESCU_PROPOSE[original.transfer_syntax_uid]

    for inst in (original, changed):
        result = storescu(rf, inst.path, *args)
        assert store_responses(result.stdout) == ["Success"], result.stdout

    rows = rf.journal_rows()
    assert [(r["sop_instance_uid"], r["version"], r["superseded"]) for r in rows] == [
        (original.sop_instance_uid, 1, 1), (original.sop_instance_uid, 2, 0)]
    for row, inst in zip(rows, (original, changed), strict=True):
        assert dicomgen.dataset_bytes(stored_path(rf, row)) == dicomgen.dataset_bytes(inst.path)
    assert len(rf.spool_objects()) == 2
    assert rf.metric(RECEIVED) == 2
    status, _ = rf.http_get(f"/api/v1/instances/{original.sop_instance_uid}")
    assert status == 200
    assert rf.events("ingress.dimse.c_store.new_version", version=2)


def test_changed_content_with_reject_policy_fails_and_keeps_the_first(
        radflow: RadflowFactory, dicom_dir: Path) -> None:
    rf = radflow({"dicom": {"duplicate_policy": "reject"}})
    original, changed = _same_uid_different_content(dicom_dir)
    args = STORESCU_PROPOSE[original.transfer_syntax_uid]

    result = storescu(rf, original.path, *args)
    assert store_responses(result.stdout) == ["Success"], result.stdout
    result = storescu(rf, changed.path, *args)
    (status,) = store_responses(result.stdout)
    assert status != "Success"
    assert "0x111" in status, result.stdout  # Duplicate SOP Instance (PS3.7 C.4.2.1.4)

    (failure,) = rf.events("ingress.dimse.c_store.failed", reason="duplicate_rejected")
    assert failure["status"] == "0x0111"
    (row,) = rf.journal_rows()
    assert row["version"] == 1
    assert dicomgen.dataset_bytes(stored_path(rf, row)) == dicomgen.dataset_bytes(original.path)
    assert rf.spool_objects() == [stored_path(rf, row)]
    assert rf.spool_temp_files() == []
    assert rf.metric(RECEIVED) == 1
