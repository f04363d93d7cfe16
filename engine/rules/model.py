"""The schema of a route file, as pydantic models (the shape only).

A route file (``routes/*.yaml``) holds ``routes`` and may hold named morph ``profiles``; a
profile file (``routes/morphs/*.yaml``) holds only ``profiles``. ``match`` trees and morph steps
are left as plain data here and compiled by :mod:`engine.rules.match` and
:mod:`engine.morph.ops`, which report each problem at its own key path (pydantic's union errors
would be much less precise). This module must not compile or evaluate anything.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

TriggerLevel = Literal["instance", "series", "study", "order", "procedure_step"]
ROUTE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TriggerSpec(_Strict):
    """When a route fires: per instance, per series or study once complete, per HL7 order
    message, per procedure step change."""

    on: TriggerLevel = "instance"
    #: series/study: complete after this long without a new instance
    quiet_seconds: float | None = Field(default=None, gt=0, le=7 * 24 * 3600)
    #: series/study: fire at the latest this long after the first instance, even if more come
    max_wait_seconds: float | None = Field(default=None, gt=0, le=30 * 24 * 3600)


class RouteSpec(_Strict):
    """One route as written."""

    name: str = Field(pattern=ROUTE_NAME)
    description: str = ""
    enabled: bool = True
    #: a level name, or a mapping (TriggerSpec) for series/study timing
    trigger: Any = "instance"
    #: a match tree (see engine.rules.match); absent: every event of the trigger
    match: Any = None
    #: names of destinations in the site config; empty only for a discard route (stop: true)
    destinations: list[str] = Field(default_factory=list)
    #: profile names and inline op mappings, applied in order
    morph: list[Any] = Field(default_factory=list)
    #: a matching route with stop ends the evaluation (later routes are not looked at)
    stop: bool = False
    #: evaluated only when no other route matched
    fallback: bool = False
    #: Storage Commitment of the instances this route matches: ``on_receipt``, ``on_archive``
    #: (this route's DICOM destinations are the archive) or a :class:`CommitmentSpec` mapping;
    #: absent: the calling AE's or the site's policy
    commitment: Any = None


class CommitmentSpec(_Strict):
    """A route's ``commitment:`` as a mapping."""

    policy: Literal["on_receipt", "on_archive"]
    #: on_archive: which of the route's destinations must confirm (default: its ``dimse`` and
    #: ``dicomweb`` ones)
    archive: list[str] | None = None


class RouteFile(_Strict):
    """``routes/*.yaml``."""

    version: Literal[1] = 1
    #: each item is validated as a :class:`RouteSpec` on its own, so one bad route does not
    #: hide the problems of the others
    routes: list[Any] = Field(default_factory=list)
    profiles: dict[str, list[Any]] = Field(default_factory=dict)


class ProfileFile(_Strict):
    """``routes/morphs/*.yaml``."""

    version: Literal[1] = 1
    profiles: dict[str, list[Any]] = Field(default_factory=dict)
