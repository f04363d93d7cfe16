"""L2: a 10,000-instance study whose MPPS COMPLETED arrives before its last instance.

A CT sends one study of 10,000 small instances, once over one association (DCMTK ``storescu``)
and once over four parallel associations (pynetdicom), to a radflow whose only route sends
whole studies (``trigger: study``) to a DCMTK ``storescp``. Between the 9,999th and the last
instance, the modality's MPPS N-SET COMPLETED lists all 10,000. What a user checks: every
instance acknowledged; the study fired as one group of 10,000, because the MPPS evidence said it
was complete, not in pieces by the quiet-period timer (the documented completion rule: the group
fires when every instance the COMPLETED step lists is stored, see docs/mpps.md); and all 10,000
at the destination, with nothing half-written (the one checker).

It is long: 20,000 instances in and 20,000 out (11.5 minutes for both cases on a shared, loaded
two-core machine). The suite has no slow marker, so it runs with the rest.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom.sop_class import ModalityPerformedProcedureStep  # type: ignore[attr-defined]

from engine.reactor import EventDrivenAE
from tests.helpers import dicomgen
from tests.helpers.invariant import assert_nothing_lost
from tests.helpers.peers import Storescp
from tests.helpers.proc import HOST, STORESCU_PROPOSE, RadflowProcess, StorescuRun
from tests.helpers.scu import association
from tests.reliability.conftest import SinkFactory, routed_config

pytestmark = [pytest.mark.dcmtk, pytest.mark.timeout(900)]

COUNT = 10_000
CT = str(dicomgen.CT_IMAGE_STORAGE)
SYNTAXES = [ExplicitVRLittleEndian]
# The quiet period is far longer than the test: only the MPPS evidence can fire the group, and
# a group split by a timer would show as two firings.
ROUTE = """\
version: 1
routes:
  - name: whole-study
    trigger: {on: study, quiet_seconds: 3600, max_wait_seconds: 7200}
    match: {attr: Modality, equals: CT}
    destinations: [pacs]
"""


def _instances(study_uid: str, series_uid: str, count: int) -> list[Dataset]:
    """``count`` tiny CT instances of one study and series (fresh SOP Instance UIDs)."""
    base = dicomgen.new_dataset("CT", size=4, study_instance_uid=study_uid,
                                series_instance_uid=series_uid, patient_id="L2-PATIENT",
                                accession_number="L2-ACC")
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = []
    for n in range(1, count + 1):
        ds = copy.deepcopy(base)
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = n
        ds.file_meta = meta
        out.append(ds)
    return out


def _mpps_create(study_uid: str) -> Dataset:
    ds = Dataset()
    ssa = Dataset()
    ssa.StudyInstanceUID = study_uid
    ssa.ReferencedStudySequence = []
    ssa.AccessionNumber = "L2-ACC"
    ssa.RequestedProcedureID = ""
    ssa.RequestedProcedureDescription = ""
    ssa.ScheduledProcedureStepID = ""
    ssa.ScheduledProcedureStepDescription = ""
    ssa.ScheduledProtocolCodeSequence = []
    ds.ScheduledStepAttributesSequence = [ssa]
    ds.PatientName = "Large^Study"
    ds.PatientID = "L2-PATIENT"
    ds.PerformedProcedureStepID = "PPS-L2"
    ds.PerformedStationAETitle = "CT01"
    ds.PerformedProcedureStepStartDate = "20261204"
    ds.PerformedProcedureStepStartTime = "0900"
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.PerformedProcedureStepEndDate = ""
    ds.PerformedProcedureStepEndTime = ""
    ds.Modality = "CT"
    ds.PerformedSeriesSequence = []
    return ds


def _mpps_completed(series_uid: str, instances: list[Dataset]) -> Dataset:
    ds = Dataset()
    ds.PerformedProcedureStepStatus = "COMPLETED"
    ds.PerformedProcedureStepEndDate = "20261204"
    ds.PerformedProcedureStepEndTime = "1000"
    series = Dataset()
    series.SeriesInstanceUID = series_uid
    series.ProtocolName = "L2"
    series.RetrieveAETitle = ""
    refs = []
    for inst in instances:
        ref = Dataset()
        ref.ReferencedSOPClassUID = CT
        ref.ReferencedSOPInstanceUID = inst.SOPInstanceUID
        refs.append(ref)
    series.ReferencedImageSequence = refs
    series.ReferencedNonImageCompositeSOPInstanceSequence = []
    ds.PerformedSeriesSequence = [series]
    return ds


class Mpps:
    """The modality's MPPS: N-CREATE now, N-SET COMPLETED later, each on an association of
    its own (as scanners do: an association held open through the whole acquisition would
    end at radflow's network timeout)."""

    def __init__(self, rf: RadflowProcess, study_uid: str) -> None:
        self.rf = rf
        self.uid = generate_uid()
        status, _ = self._send(lambda assoc: assoc.send_n_create(
            _mpps_create(study_uid), ModalityPerformedProcedureStep, self.uid))
        assert status.Status == 0x0000

    def _send(self, request: Callable[[Any], Any]) -> Any:
        ae = EventDrivenAE(ae_title="CT01")
        ae.add_requested_context(ModalityPerformedProcedureStep)
        ae.dimse_timeout = 120
        assoc = ae.associate(HOST, self.rf.port, ae_title=self.rf.ae_title)
        assert assoc.is_established
        try:
            return request(assoc)
        finally:
            assoc.release()
            ae.shutdown()

    def completed(self, series_uid: str, instances: list[Dataset]) -> None:
        status, _ = self._send(lambda assoc: assoc.send_n_set(
            _mpps_completed(series_uid, instances), ModalityPerformedProcedureStep, self.uid))
        assert status.Status == 0x0000


def _send_storescu(rf: RadflowProcess, folder: Path, instances: list[Dataset]) -> set[str]:
    """One association: DCMTK storescu sends every file of ``folder``; the acknowledged UIDs."""
    folder.mkdir(parents=True, exist_ok=True)
    for n, ds in enumerate(instances):
        ds.save_as(folder / f"{n:05d}.dcm", enforce_file_format=True)
    run = StorescuRun(rf, sorted(folder.glob("*.dcm")), "-aet", "CT01",
                      *STORESCU_PROPOSE[ExplicitVRLittleEndian])
    assert run.finish(600) == 0, run.text()[-2000:]
    by_name = {f"{n:05d}.dcm": str(ds.SOPInstanceUID) for n, ds in enumerate(instances)}
    return {by_name[p.name] for p in run.acknowledged}


def _send_parallel(rf: RadflowProcess, instances: list[Dataset], associations: int
                   ) -> set[str]:
    """``associations`` pynetdicom associations in parallel, each a share of ``instances``."""
    acked: set[str] = set()
    lock = threading.Lock()
    errors: list[BaseException] = []

    def share(part: list[Dataset], n: int) -> None:
        try:
            with association(rf, [(CT, SYNTAXES)], calling_ae="CT01") as assoc:
                assert assoc.is_established
                for ds in part:
                    status = assoc.send_c_store(ds)
                    if status is not None and status.Status == 0:
                        with lock:
                            acked.add(str(ds.SOPInstanceUID))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=share, args=(instances[n::associations], n))
               for n in range(associations)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert not errors, errors
    return acked


@pytest.mark.parametrize("associations", [1, 4])
def test_l2_a_10000_instance_study_is_routed_whole(radflow, sinks: SinkFactory,
                                                   tmp_path: Path, associations: int) -> None:
    pacs: Storescp = sinks("PACS")
    rf = radflow(routed_config({"pacs": pacs}), start=False)
    (Path(rf.config["routing"]["routes_dir"]) / "10-study.yaml").write_text(ROUTE)
    rf.start()
    study_uid, series_uid = generate_uid(), generate_uid()
    instances = _instances(study_uid, series_uid, COUNT)
    mpps = Mpps(rf, study_uid)

    # Everything but the last instance, then MPPS COMPLETED listing all of them, then the last.
    if associations == 1:
        acked = _send_storescu(rf, tmp_path / "study", instances[:-1])
    else:
        acked = _send_parallel(rf, instances[:-1], associations)
    assert len(acked) == COUNT - 1
    mpps.completed(series_uid, instances)
    waiting = rf.wait_for_event("mpps.completeness.waiting", timeout=60,
                                sop_instance_uid=mpps.uid)
    assert waiting["expected"] == COUNT and waiting["missing"] == 1
    assert not rf.events("routing.group_fired")  # nothing fired before the study was whole

    with association(rf, [(CT, SYNTAXES)], calling_ae="CT01") as assoc:
        status = assoc.send_c_store(instances[-1])
        assert status is not None and status.Status == 0
    acked.add(str(instances[-1].SOPInstanceUID))

    rf.wait_for_event("mpps.study_complete", timeout=120, sop_instance_uid=mpps.uid)
    fired = rf.wait_for_event("routing.group_fired", timeout=120, key=study_uid)
    assert fired["reason"] == "study_complete"
    assert fired["instances"] == COUNT
    missing = pacs.wait_for({str(ds.SOPInstanceUID) for ds in instances}, timeout=600)
    assert not missing, f"{len(missing)} of {COUNT} not forwarded"
    # One firing only: the study was never split.
    assert len(rf.events("routing.group_fired", key=study_uid)) == 1
    assert_nothing_lost(acked, {"pacs": pacs.received()},
                        sent={str(ds.SOPInstanceUID) for ds in instances}, rf=rf)
