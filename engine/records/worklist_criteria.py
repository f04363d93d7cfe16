"""What a Modality Worklist query asks of the store: constraints on indexed worklist columns.

Owns :class:`Column` (the indexed columns, by the names the store gives them), :class:`Criterion`
(one constraint: equal, DICOM wildcard, inclusive range or list) and :class:`AnyOf`. The
worklist stage translates a C-FIND Identifier or an API filter into these
(:meth:`engine.worklist.query.MwlQuery.parse`); each store backend turns them into its own SQL,
a superset of the answer that the stage then checks exactly. It must not parse datasets, match
items or build SQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal


class Column(StrEnum):
    """Indexed worklist columns a query may constrain (the store knows their SQL names)."""

    PATIENT_ID = "patient_id"
    ISSUER = "issuer_of_patient_id"
    # fold_case of each PN component group: alphabetic, ideographic, phonetic
    NAME_ALPHA = "patient_name_norm"
    NAME_IDEO = "patient_name_ideographic_norm"
    NAME_PHON = "patient_name_phonetic_norm"
    ACCESSION = "accession_number"
    REQUESTED_PROCEDURE_ID = "requested_procedure_id"
    STUDY_UID = "study_instance_uid"
    PLACER = "placer_order_number"
    FILLER = "filler_order_number"
    MODALITY = "modality"
    STATION_AE = "scheduled_station_ae_title"
    SPS_DATE = "sps_start_date"


@dataclass(frozen=True, slots=True)
class Criterion:
    """One constraint on an indexed column.

    ``op``: ``eq`` (``value``), ``wildcard`` (``value`` with DICOM ``*``/``?``), ``range``
    (``low``/``high``, either may be None, inclusive) or ``in`` (``values``).
    """

    column: Column
    op: Literal["eq", "wildcard", "range", "in"]
    value: str = ""
    low: str | None = None
    high: str | None = None
    values: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AnyOf:
    """At least one of ``criteria`` holds (a PN pattern against each component group)."""

    criteria: tuple[Criterion, ...]


Constraint = Criterion | AnyOf
