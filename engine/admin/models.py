"""The admin API's request models: query, path and body shapes shared by its routes.

Each model is both the validator of a request and its OpenAPI schema (``engine.admin.api``), so
the description cannot drift from what is enforced. Integers are bounded to what the store
can hold (SQLite's signed 64-bit), so an out-of-range id is a 400, never an overflow deep
inside. Selections that act on many rows never default to "all": it is always said.
"""

from __future__ import annotations

from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: a row id: what SQLite's INTEGER PRIMARY KEY can hold
RowId = Annotated[int, Field(ge=1, le=2**63 - 1)]
Offset = Annotated[int, Field(ge=0, le=2**63 - 1, description="rows to skip (default 0)")]
Limit = Annotated[int, Field(ge=1, le=1000, description="at most 1000 (default 100)")]
Uid = Annotated[str, Field(min_length=1, max_length=64)]
Text = Annotated[str, Field(max_length=256)]


class Params(BaseModel):
    """Base of every parameter model: unknown parameters are errors."""

    model_config = ConfigDict(extra="forbid")


class Paging(Params):
    limit: Limit = 100
    offset: Offset = 0


class InstancePath(Params):
    sop_instance_uid: Uid


class InstanceDryRunQuery(InstancePath):
    time: Text | None = Field(default=None, description="evaluation time, ISO 8601 "
                                                        "(default: now)")


class StudyInstancesQuery(Params):
    study_instance_uid: Uid
    after: Annotated[int, Field(ge=0, le=2**63 - 1, description=(
        "the last id of the previous page (default 0: from the first)"))] = 0
    limit: Limit = 100


class DestinationPath(Params):
    destination: Text


class DeadLetterList(DestinationPath, Paging):
    payload: bool = Field(default=False, description="include each row's frozen payload")


class DeadLetterQuery(DestinationPath):
    id: list[RowId] | None = Field(
        default=None, min_length=1, max_length=10_000,
        description="one or more row ids (repeat or comma-separate)")
    all: bool = Field(default=False, description="every dead letter of the destination")


class DeadLetterSelection(BaseModel):
    """Which dead letters: ``{"ids": [...]}`` or ``{"all": true}``, never both, never neither."""

    model_config = ConfigDict(extra="forbid")

    ids: list[RowId] | None = Field(default=None, min_length=1, max_length=10_000)
    all: bool = False

    @model_validator(mode="after")
    def _one_way(self) -> Self:
        if self.ids is not None and self.all:
            raise ValueError("give ids or all, not both")
        if self.ids is None and not self.all:
            raise ValueError('name the dead letters: {"ids": [...]} or {"all": true}')
        return self


class WorklistQuery(Paging):
    status: Text | None = Field(default=None, description=(
        "comma-separated: SCHEDULED, IN_PROGRESS, COMPLETED, DISCONTINUED, CANCELLED "
        "(default: all)"))
    patient_id: Text | None = Field(default=None, description="PatientID (wildcards * ?)")
    accession_number: Text | None = Field(default=None, description="AccessionNumber")
    modality: Text | None = Field(default=None, description="Modality")
    station_ae: Text | None = Field(default=None, description="ScheduledStationAETitle")
    study_instance_uid: Text | None = Field(default=None, description="StudyInstanceUID")
    date: Text | None = Field(default=None, description=(
        "ScheduledProcedureStepStartDate: D, D-, -D or D1-D2"))


class WorklistItemPath(Params):
    id: RowId


class WorklistDelete(WorklistItemPath):
    purge: bool = Field(default=False, description="delete the row instead of cancelling")


class Hl7MessagesQuery(Paging):
    ack: Text | None = Field(default=None, description=(
        "comma-separated ACK codes, e.g. AE,AR for rejected ones"))


class DryRunQuery(Params):
    calling_ae: Text = ""
    called_ae: Text = ""
    source_ip: Text | None = None
    time: Text | None = Field(default=None, description="evaluation time, ISO 8601 "
                                                        "(default: now)")
    name: Text = Field(default="upload", description="a label for the upload in the answer")


class StepDryRunQuery(Params):
    status: Text | None = Field(default=None, description=(
        "the event's status: IN PROGRESS, COMPLETED or DISCONTINUED (default: the "
        "attributes' own)"))
    calling_ae: Text = ""
    time: Text | None = Field(default=None, description="evaluation time, ISO 8601 "
                                                        "(default: now)")
    name: Text = "upload"
