"""Bad peers and bad input against a real radflow process: each is refused the way a user can see,
logged with its reason, leaves nothing half-written, and does not harm the next association.

Associations are refused with the PS3.8 reason (called AE, calling AE and its host, user identity);
presentation contexts radflow cannot take (a private SOP class, a transfer syntax the listener
does not offer) are rejected in the association, so nothing is ever sent; broken datasets
(truncated, bogus VR bytes) and a path-like SOP Instance UID get a C-STORE failure status with an
Error Comment; a peer that aborts or drops the connection halfway stores nothing; and a spool
without room answers Out of Resources (0xA700) while C-ECHO keeps working.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import MPEG2MPML, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from tests.helpers import dicomgen
from tests.helpers.proc import (
    STORESCU_PROPOSE,
    RadflowFactory,
    RadflowProcess,
    echoscu,
    store_responses,
    storescu,
)
from tests.helpers.scu import association, send_partial_then_quit, send_raw_file

pytestmark = [pytest.mark.dcmtk, pytest.mark.timeout(120)]

CT = dicomgen.CT_IMAGE_STORAGE
CANNOT_UNDERSTAND = 0xC000
SUCCESS = 0x0000


# --- what every test checks -----------------------------------------------------------------
def assert_nothing_stored(rf: RadflowProcess) -> None:
    """No journal row, no spool object, no temp (``.part``) file."""
    assert rf.journal_rows() == []
    assert rf.spool_objects() == []
    assert rf.spool_temp_files() == []


def assert_next_association_works(rf: RadflowProcess, dicom_dir: Path, *scu_args: str,
                                  echo_args: tuple[str, ...] = ()) -> None:
    """A C-ECHO and a C-STORE on fresh associations succeed, and the instance is kept."""
    result = echoscu(rf, *echo_args, *scu_args)
    assert result.returncode == 0, result.stdout
    inst = dicomgen.write_instance(dicom_dir / "next")
    result = storescu(rf, inst.path, *STORESCU_PROPOSE[inst.transfer_syntax_uid], *scu_args)
    assert store_responses(result.stdout) == ["Success"], result.stdout
    assert inst.sop_instance_uid in {r["sop_instance_uid"] for r in rf.journal_rows()}
    assert rf.spool_temp_files() == []


def rejections(rf: RadflowProcess) -> list[dict[str, Any]]:
    """The association rejections logged so far, once there is one (the A-ASSOCIATE-RJ may
    reach the peer a moment before radflow's log line is written)."""
    rf.wait_for_event("ingress.dimse.association.rejected")
    return rf.events("ingress.dimse.association.rejected")


# --- association policy ---------------------------------------------------------------------
def test_wrong_called_ae_is_rejected(radflow: RadflowFactory, dicom_dir: Path) -> None:
    rf = radflow()
    result = echoscu(rf, called_ae="WRONG")
    assert result.returncode != 0
    assert "Association Rejected" in result.stdout, result.stdout
    assert "Called AE Title Not Recognized" in result.stdout
    (event,) = rejections(rf)
    assert event["reason"] == "called_ae_unknown"
    assert event["called_ae"] == "WRONG"
    assert_nothing_stored(rf)
    assert_next_association_works(rf, dicom_dir)


ALLOW_LIST = {"dicom": {"listeners": [{"accept_any_calling": False, "allowed_calling": [
    {"ae_title": "GOODSCU", "host": "127.0.0.1"},
    {"ae_title": "REMOTESCU", "host": "10.0.0.0/8"},
]}]}}


@pytest.mark.parametrize("calling_ae", ["STRANGER", "REMOTESCU"],
                         ids=["unknown_ae", "known_ae_from_other_network"])
def test_calling_ae_not_on_the_allow_list_is_rejected(radflow: RadflowFactory, dicom_dir: Path,
                                                      calling_ae: str) -> None:
    rf = radflow(ALLOW_LIST)
    result = echoscu(rf, "-aet", calling_ae)
    assert result.returncode != 0
    assert "Calling AE Title Not Recognized" in result.stdout, result.stdout
    (event,) = rejections(rf)
    assert event["reason"] == "calling_ae_not_allowed"
    assert event["calling_ae"] == calling_ae
    assert event["peer_host"] == "127.0.0.1"
    assert rf.metric("radflow_dimse_rejections_total", reason="calling_ae_not_allowed") == 1
    assert_nothing_stored(rf)
    assert_next_association_works(rf, dicom_dir, "-aet", "GOODSCU")
    assert {r["calling_ae"] for r in rf.journal_rows()} == {"GOODSCU"}


IDENTITY = {"dicom": {"listeners": [{"user_identities": [
    {"username": "modality", "passcode": "secret"}]}]}}


def test_missing_user_identity_is_rejected(radflow: RadflowFactory, dicom_dir: Path) -> None:
    rf = radflow(IDENTITY)
    inst = dicomgen.write_instance(dicom_dir)
    result = storescu(rf, inst.path, *STORESCU_PROPOSE[inst.transfer_syntax_uid])
    assert "Association Rejected" in result.stdout, result.stdout
    assert store_responses(result.stdout) == []
    (event,) = rejections(rf)
    assert event["reason"] == "user_identity_required"
    assert_nothing_stored(rf)

    result = storescu(rf, inst.path, *STORESCU_PROPOSE[inst.transfer_syntax_uid],
                      "-usr", "modality", "-pwd", "wrong")
    assert "Association Rejected" in result.stdout, result.stdout
    assert rf.events("ingress.dimse.association.identity_refused")
    assert_nothing_stored(rf)

    result = storescu(rf, inst.path, *STORESCU_PROPOSE[inst.transfer_syntax_uid],
                      "-usr", "modality", "-pwd", "secret")
    assert store_responses(result.stdout) == ["Success"], result.stdout
    assert [r["sop_instance_uid"] for r in rf.journal_rows()] == [inst.sop_instance_uid]


# --- presentation contexts ------------------------------------------------------------------
def _storescu_profile(path: Path, abstract_syntax: str, transfer_syntax: str) -> Path:
    """A storescu association profile proposing exactly one presentation context."""
    path.write_text(
        "[[TransferSyntaxes]]\n[Only]\nTransferSyntax1 = " + transfer_syntax + "\n\n"
        "[[PresentationContexts]]\n[Only]\nPresentationContext1 = " + abstract_syntax
        + "\\Only\n\n[[Profiles]]\n[Only]\nPresentationContexts = Only\n", encoding="ascii")
    return path


def test_unsupported_sop_class_is_rejected_in_the_association(
        radflow: RadflowFactory, dicom_dir: Path, tmp_path: Path) -> None:
    rf = radflow()
    inst = dicomgen.write_instance(dicom_dir, sop_class_uid=dicomgen.PRIVATE_SOP_CLASS)
    profile = _storescu_profile(tmp_path / "private.cfg", dicomgen.PRIVATE_SOP_CLASS,
                                ExplicitVRLittleEndian)
    result = storescu(rf, inst.path, "-xf", str(profile), "Only")
    assert result.returncode != 0
    assert "No Acceptable Presentation Contexts" in result.stdout, result.stdout
    assert store_responses(result.stdout) == []
    event = rf.wait_for_event("ingress.dimse.association.contexts_rejected")
    assert event["accepted"] == 0
    assert event["contexts"] == [{"abstract_syntax": dicomgen.PRIVATE_SOP_CLASS,
                                  "transfer_syntaxes": [ExplicitVRLittleEndian],
                                  "reason": "abstract_syntax_not_supported"}]
    assert_nothing_stored(rf)
    assert_next_association_works(rf, dicom_dir)


#: (config overrides, file to send, storescu options)
Case = tuple[dict[str, Any], Path, tuple[str, ...]]


def _implicit_to_explicit_only_listener(dicom_dir: Path) -> Case:
    inst = dicomgen.write_instance(dicom_dir, ImplicitVRLittleEndian)
    config = {"dicom": {"listeners": [{"transfer_syntaxes": [ExplicitVRLittleEndian]}]}}
    return config, inst.path, STORESCU_PROPOSE[ImplicitVRLittleEndian]


def _mpeg2_to_default_listener(dicom_dir: Path) -> Case:
    # MPEG-2 video: a syntax radflow's defaults do not list at all.
    inst = dicomgen.write_encapsulated_instance(dicom_dir, MPEG2MPML,
                                                b"\x00\x00\x01\xb3" + b"\x5a" * 60)
    return {}, inst.path, ("-R", "-xm")


@pytest.mark.parametrize("case", [_implicit_to_explicit_only_listener, _mpeg2_to_default_listener],
                         ids=["not_configured_on_listener", "not_supported_at_all"])
def test_unsupported_transfer_syntax_is_rejected_in_the_association(
        radflow: RadflowFactory, dicom_dir: Path,
        case: Callable[[Path], Case]) -> None:
    config, path, args = case(dicom_dir)
    rf = radflow(config)
    result = storescu(rf, path, *args)
    assert result.returncode != 0
    assert "No Acceptable Presentation Contexts" in result.stdout, result.stdout
    assert store_responses(result.stdout) == []
    event = rf.wait_for_event("ingress.dimse.association.contexts_rejected")
    assert event["accepted"] == 0
    assert {cx["reason"] for cx in event["contexts"]} == {"transfer_syntaxes_not_supported"}
    assert_nothing_stored(rf)
    # echoscu proposes only Implicit VR LE unless told otherwise; the first case's listener
    # offers Explicit VR LE only.
    assert_next_association_works(rf, dicom_dir, echo_args=("-pts", "3"))


# --- broken datasets, sent as raw bytes by pynetdicom -----------------------------------------
def _truncated(src: Path, dst: Path) -> Path:
    return dicomgen.truncated_copy(src, dst, drop=100)


def _bogus_vr(src: Path, dst: Path) -> Path:
    return dicomgen.corrupt_vr_copy(src, dst)


@pytest.mark.parametrize(("make", "comment_says"),
                         [(_truncated, "truncated"), (_bogus_vr, "invalid VR")],
                         ids=["truncated", "bogus_vr"])
def test_broken_dataset_fails_with_cannot_understand(
        radflow: RadflowFactory, dicom_dir: Path, make: Callable[[Path, Path], Path],
        comment_says: str) -> None:
    rf = radflow()
    good = dicomgen.write_instance(dicom_dir / "good")
    broken = make(good.path, dicom_dir / "broken.dcm")

    with association(rf, [(CT, [ExplicitVRLittleEndian])]) as assoc:
        assert assoc.is_established
        status = send_raw_file(assoc, broken)
        assert status.Status == CANNOT_UNDERSTAND
        assert comment_says in status.ErrorComment
        assert_nothing_stored(rf)
        # The association survives a refused instance: the intact one goes through.
        assert send_raw_file(assoc, good.path).Status == SUCCESS

    (event,) = rf.events("ingress.dimse.c_store.failed")
    assert event["reason"] == "malformed_dataset"
    assert event["status"] == "0xC000"
    assert comment_says in event["detail"]
    assert [r["sop_instance_uid"] for r in rf.journal_rows()] == [good.sop_instance_uid]
    assert len(rf.spool_objects()) == 1
    assert rf.spool_temp_files() == []
    assert_next_association_works(rf, dicom_dir)


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # pydicom, reading it to send it
def test_path_like_sop_instance_uid_is_refused(radflow: RadflowFactory, dicom_dir: Path,
                                               tmp_path: Path) -> None:
    rf = radflow()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid UI value it writes
        evil = dicomgen.write_instance(dicom_dir, sop_instance_uid="../../x",
                                       name="traversal.dcm")

    with association(rf, [(CT, [ExplicitVRLittleEndian])]) as assoc:
        assert assoc.is_established
        status = send_raw_file(assoc, evil.path)
    assert status.Status == CANNOT_UNDERSTAND
    assert "UID" in status.ErrorComment

    (event,) = rf.events("ingress.dimse.c_store.failed")
    assert event["reason"] == "invalid_identifier"
    assert event["sop_instance_uid"] == "../../x"
    assert_nothing_stored(rf)
    named_x = [p for p in tmp_path.rglob("*") if p.name.split(".")[0] == "x"]
    assert named_x == []
    assert not (rf.spool_dir / "../../x").exists()
    assert_next_association_works(rf, dicom_dir)


# --- a peer that goes away halfway ----------------------------------------------------------
@pytest.mark.parametrize("how", ["abort", "close"], ids=["a_abort", "tcp_close"])
def test_peer_quitting_mid_transfer_stores_nothing(radflow: RadflowFactory, dicom_dir: Path,
                                                   how: str) -> None:
    rf = radflow({"dicom": {"listeners": [{"max_pdu_size": 16384}]}})
    big = dicomgen.write_instance(dicom_dir, size=256)  # ~128 KiB: several P-DATA fragments

    with association(rf, [(CT, [ExplicitVRLittleEndian])]) as assoc:
        assert assoc.is_established
        total = send_partial_then_quit(assoc, big.path, big.sop_class_uid,
                                       big.sop_instance_uid, fragments=3,
                                       how="abort" if how == "abort" else "close")
    assert total > 3

    event = rf.wait_for_event("ingress.dimse.association.aborted")
    assert event["calling_ae"] == "PYSCU"
    assert rf.events("ingress.dimse.c_store.failed") == []
    assert_nothing_stored(rf)
    assert_next_association_works(rf, dicom_dir)


# --- no room in the spool -------------------------------------------------------------------
def test_spool_below_threshold_answers_out_of_resources(radflow: RadflowFactory,
                                                        dicom_dir: Path) -> None:
    rf = radflow({"storage": {"min_free_mb": 10**9}}, wait_ready=False)
    status, body = rf.readyz()
    assert status == 503
    assert body["checks"]["spool"]["ok"] is False
    assert "below threshold" in body["checks"]["spool"]["detail"]
    assert body["checks"]["store"]["ok"] and body["checks"]["listeners"]["ok"]

    inst = dicomgen.write_instance(dicom_dir)
    result = storescu(rf, inst.path, *STORESCU_PROPOSE[inst.transfer_syntax_uid])
    (response,) = store_responses(result.stdout)
    assert "OutOfResources" in response, result.stdout
    (event,) = rf.events("ingress.dimse.c_store.failed")
    assert event["reason"] == "out_of_resources"
    assert event["status"] == "0xA700"
    assert_nothing_stored(rf)
    assert rf.metric("radflow_spool_low_space") == 1

    result = echoscu(rf)
    assert result.returncode == 0, result.stdout


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs mounted under ``tmp_path`` (skips when mounting is not permitted)."""
    mount = shutil.which("mount")
    if mount is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    target = tmp_path / "tmpfs"
    target.mkdir()
    done = subprocess.run([mount, "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs",
                           str(target)], capture_output=True, text=True, timeout=10, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield target
    finally:
        if subprocess.run(["umount", str(target)], capture_output=True, timeout=10,
                          check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(target)], capture_output=True, timeout=10,
                           check=False)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_spool_disk_full_answers_out_of_resources_and_leaves_no_partial_file(
        tiny_tmpfs: Path, radflow: RadflowFactory, dicom_dir: Path) -> None:
    spool = tiny_tmpfs / "spool"
    rf = radflow({"storage": {"spool_dir": str(spool), "min_free_mb": 0}})
    free = free_bytes(spool)
    # The dataset passes the free-space check (it fits, barely) but its file, with preamble and
    # meta group, does not: the write itself hits ENOSPC.
    inst = dicomgen.write_sized_instance(dicom_dir, free - 64)

    result = storescu(rf, inst.path, *STORESCU_PROPOSE[inst.transfer_syntax_uid],
                      timeout=60)
    (response,) = store_responses(result.stdout)
    assert "OutOfResources" in response, result.stdout
    (event,) = rf.events("ingress.dimse.c_store.failed")
    assert event["reason"] == "out_of_resources"
    assert event["status"] == "0xA700"
    assert "disk full" in event["detail"]
    assert_nothing_stored(rf)
    assert free_bytes(spool) == free  # the partial file is gone, not just hidden
    assert_next_association_works(rf, dicom_dir)
    rf.stop()


def test_full_disk_with_a_zero_threshold_is_not_ready_and_refuses_alike(
        tiny_tmpfs: Path, radflow: RadflowFactory, dicom_dir: Path) -> None:
    # min_free_mb: 0 at 0 MiB free: /readyz and C-STORE give the same verdict (not ready, A700).
    spool = tiny_tmpfs / "spool"
    rf = radflow({"storage": {"spool_dir": str(spool), "min_free_mb": 0}})
    with open(tiny_tmpfs / "filler", "wb", buffering=0) as filler, \
            contextlib.suppress(OSError):
        for _ in range(10_000):  # 2 MiB in 4 KiB pages, bounded
            filler.write(b"\0" * 4096)
    assert free_bytes(spool) == 0
    rf.wait_for_event("durable.spool.space_changed", has_room=False)

    status, body = rf.readyz()
    assert status == 503, body
    assert body["checks"]["spool"]["ok"] is False
    assert "0 MiB free" in body["checks"]["spool"]["detail"]

    inst = dicomgen.write_instance(dicom_dir)
    result = storescu(rf, inst.path, *STORESCU_PROPOSE[inst.transfer_syntax_uid])
    (response,) = store_responses(result.stdout)
    assert "OutOfResources" in response, result.stdout
    assert_nothing_stored(rf)

    (tiny_tmpfs / "filler").unlink()
    rf.wait_for_event("durable.spool.space_changed", has_room=True)
    assert rf.readyz()[0] == 200  # room again: ready again, no restart
    rf.stop()
