"""The pure MPPS rules (PS3.4 Annex F) of engine.procedure.model, without sockets or store."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from engine.errors import (
    InvalidAttributeValue,
    MissingAttribute,
    MissingAttributeValue,
    ProcedureStepFinal,
)
from engine.procedure.model import apply_set, check_create, expected_instances, worklist_link
from engine.records.procedure_step import PpsStatus, ProcedureStep, ScheduledStepKeys
from engine.records.worklist import StoredWorklistItem, WorklistItem, WorklistStatus

STUDY = "1.2.3.4"


def attrs(**changes: object) -> Dataset:
    ds = Dataset()
    ssa = Dataset()
    ssa.StudyInstanceUID = STUDY
    ssa.AccessionNumber = "ACC1"
    ssa.RequestedProcedureID = "RP1"
    ssa.ScheduledProcedureStepID = "SPS1"
    ds.ScheduledStepAttributesSequence = [ssa]
    ds.PatientID = "P1"
    ds.PerformedProcedureStepID = "PPS1"
    ds.PerformedStationAETitle = "CT01"
    ds.PerformedProcedureStepStartDate = "20261125"
    ds.PerformedProcedureStepStartTime = "0900"
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.PerformedProcedureStepEndDate = ""
    ds.PerformedProcedureStepEndTime = ""
    ds.Modality = "CT"
    for key, value in changes.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    return ds


def step(status: PpsStatus = PpsStatus.IN_PROGRESS, ds: Dataset | None = None) -> ProcedureStep:
    new = check_create(generate_uid(), ds or attrs(), calling_ae="CT01", received_at="t")
    return ProcedureStep(1, new.sop_instance_uid, status, STUDY, "ACC1", "P1", "PPS1", "CT",
                         "CT01", (), True, "t", "t", 0, 0, None, new.dataset_json)


def final(status: str = "COMPLETED", refs: int = 2) -> Dataset:
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepEndDate = "20261125"
    ds.PerformedProcedureStepEndTime = "0930"
    series = Dataset()
    series.SeriesInstanceUID = "1.2.3.4.5"
    images = []
    for i in range(refs):
        ref = Dataset()
        ref.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        ref.ReferencedSOPInstanceUID = f"1.2.3.4.5.{i}"
        images.append(ref)
    series.ReferencedImageSequence = images
    sr = Dataset()
    sr.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.22"
    sr.ReferencedSOPInstanceUID = "1.2.3.4.5.99"
    series.ReferencedNonImageCompositeSOPInstanceSequence = [sr]
    ds.PerformedSeriesSequence = [series]
    return ds


def test_create_takes_the_link_keys() -> None:
    new = check_create("1.2.3", attrs(), calling_ae="CT01", received_at="t")
    assert new.keys == (ScheduledStepKeys(STUDY, "ACC1", "RP1", "SPS1"),)
    assert new.study_instance_uid == STUDY and new.accession_number == "ACC1"


@pytest.mark.parametrize(("changes", "error"), [
    ({"PerformedProcedureStepID": None}, MissingAttribute),
    ({"Modality": ""}, MissingAttributeValue),
    ({"PerformedProcedureStepStatus": "COMPLETED"}, InvalidAttributeValue),
    ({"PerformedProcedureStepStatus": "DONE"}, InvalidAttributeValue),
])
def test_create_refusals(changes: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        check_create("1.2.3", attrs(**changes), calling_ae="CT01", received_at="t")


def test_completed_lists_image_and_non_image_instances() -> None:
    update = apply_set(step(), final())
    assert update.status is PpsStatus.COMPLETED
    assert {e.sop_instance_uid for e in update.expected} == {
        "1.2.3.4.5.0", "1.2.3.4.5.1", "1.2.3.4.5.99"}
    assert expected_instances(Dataset()) == ()


def test_a_final_step_may_no_longer_be_updated() -> None:
    with pytest.raises(ProcedureStepFinal):
        apply_set(step(PpsStatus.COMPLETED), final("DISCONTINUED"))


def test_final_state_needs_end_date_and_series() -> None:
    no_end = Dataset()
    no_end.PerformedProcedureStepStatus = "DISCONTINUED"
    with pytest.raises(MissingAttributeValue):
        apply_set(step(), no_end)
    no_series = final()
    no_series.PerformedSeriesSequence = []
    with pytest.raises(MissingAttributeValue):
        apply_set(step(), no_series)


def test_fixed_attributes_may_be_repeated_not_changed() -> None:
    same = final()
    same.Modality = "CT"
    assert apply_set(step(), same).status is PpsStatus.COMPLETED
    other = final()
    other.Modality = "MR"
    with pytest.raises(InvalidAttributeValue):
        apply_set(step(), other)


def _item(item_id: int, status: WorklistStatus, **keys: str) -> StoredWorklistItem:
    base = {"study_instance_uid": STUDY, "accession_number": "ACC1",
            "requested_procedure_id": "RP1", "scheduled_procedure_step_id": "SPS1"}
    return StoredWorklistItem(item_id, WorklistItem(patient_id="P1", status=status,
                                                    **{**base, **keys}))


def test_link_follows_the_worklist_transition_rules() -> None:
    keys = (ScheduledStepKeys(STUDY, "ACC1", "RP1", "SPS1"),)
    items = [_item(1, WorklistStatus.SCHEDULED),
             _item(2, WorklistStatus.SCHEDULED, scheduled_procedure_step_id="SPS2"),
             _item(3, WorklistStatus.CANCELLED),
             _item(4, WorklistStatus.SCHEDULED, study_instance_uid="9.9")]
    link = worklist_link(items, keys, PpsStatus.IN_PROGRESS, "now")
    # Item 2 is another scheduled step of the order; item 4 another study.
    assert link.item_ids == (1, 3)
    assert [u.id for u in link.updates] == [1]
    assert link.updates[0].item.status is WorklistStatus.IN_PROGRESS
    assert link.refused == ((3, "CANCELLED"),)  # reported, never forced
