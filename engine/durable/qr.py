"""The Query/Retrieve index's records and query shape, shared by every store backend.

What radflow answers C-FIND, C-MOVE and C-GET from: one :class:`QrIndexRow` per current SOP
Instance (patient, study, series and image attributes read from its header after intake), and
:class:`QrQuery`, an Identifier already turned into column constraints (:class:`QrMatch`) at
one level (PS3.4 C.2 / C.4). Matching kinds are the PS3.4 C.2.2.2 ones the index can answer
(single value, wildcard, range, list of UIDs); each backend translates them into its own SQL.
This module holds no SQL and no DICOM decoding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal

QrLevel = Literal["PATIENT", "STUDY", "SERIES", "IMAGE"]
LEVELS: Final[tuple[QrLevel, ...]] = ("PATIENT", "STUDY", "SERIES", "IMAGE")

#: DICOM keyword -> (index column, the level it belongs to)
KEYWORD_COLUMNS: Final[dict[str, tuple[str, QrLevel]]] = {
    "PatientID": ("patient_id", "PATIENT"),
    "PatientName": ("patient_name", "PATIENT"),
    "PatientBirthDate": ("patient_birth_date", "PATIENT"),
    "PatientSex": ("patient_sex", "PATIENT"),
    "StudyInstanceUID": ("study_instance_uid", "STUDY"),
    "StudyDate": ("study_date", "STUDY"),
    "StudyTime": ("study_time", "STUDY"),
    "AccessionNumber": ("accession_number", "STUDY"),
    "StudyID": ("study_id", "STUDY"),
    "StudyDescription": ("study_description", "STUDY"),
    "ReferringPhysicianName": ("referring_physician_name", "STUDY"),
    "SeriesInstanceUID": ("series_instance_uid", "SERIES"),
    "SeriesNumber": ("series_number", "SERIES"),
    "SeriesDescription": ("series_description", "SERIES"),
    "Modality": ("modality", "SERIES"),
    "SOPInstanceUID": ("sop_instance_uid", "IMAGE"),
    "SOPClassUID": ("sop_class_uid", "IMAGE"),
    "InstanceNumber": ("instance_number", "IMAGE"),
}
#: the index columns in :class:`QrIndexRow` order (after ``instance_id``)
COLUMNS: Final[tuple[str, ...]] = tuple(c for c, _ in KEYWORD_COLUMNS.values())
#: the unique key of each level
UNIQUE_KEYS: Final[dict[QrLevel, str]] = {
    "PATIENT": "PatientID", "STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID"}


@dataclass(frozen=True, slots=True)
class QrIndexRow:
    """One instance as the Q/R index keeps it (text values as decoded, ``""`` when absent)."""

    instance_id: int  # the journal row (``instances.id``) holding the file
    values: tuple[str, ...]  # in :data:`COLUMNS` order

    def get(self, column: str) -> str:
        return self.values[COLUMNS.index(column)]


@dataclass(frozen=True, slots=True)
class QrMatch:
    """One constraint. ``kind``: ``equals`` (``values[0]``), ``wildcard`` (``values[0]`` with
    ``*`` and ``?``), ``range`` (``values`` = (low, high), either may be ``""``), ``any`` (one
    of ``values``: a list of UIDs), ``modalities`` (the study has a series of one of
    ``values``: ModalitiesInStudy). ``fold``: compare ignoring case (person names)."""

    column: str
    kind: Literal["equals", "wildcard", "range", "any", "modalities"]
    values: tuple[str, ...]
    fold: bool = False


@dataclass(frozen=True, slots=True)
class QrQuery:
    level: QrLevel
    matches: tuple[QrMatch, ...] = ()
    limit: int = 10_000


@dataclass(frozen=True, slots=True)
class QrRecord:
    """One answer: the level's attributes (and those of the levels above) by column, and the
    counts the level's answer may carry (PS3.4 C.3.4 / C.3.5 / C.3.6)."""

    values: dict[str, str]
    studies: int = 0
    series: int = 0
    instances: int = 0
    modalities: tuple[str, ...] = ()
    sop_classes: tuple[str, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class QrLocated:
    """An instance to send for a C-MOVE or C-GET, with its spooled file."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    spool_path: str
    #: for the audit trail (a transfer is recorded per study, with its patient)
    study_instance_uid: str = ""
    patient_id: str = ""
