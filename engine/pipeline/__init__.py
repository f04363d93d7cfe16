"""The pipeline: from the journal through the rules into the outbox (D3).

Owns :mod:`~engine.pipeline.router` (bus events and journal replay → one routing transaction
per batch; series/study groups with quiet-period timers; ``study_complete``),
:mod:`~engine.pipeline.rulesets` (the ruleset in use and its hot reload),
:mod:`~engine.pipeline.payload` (what an outbox row carries) and :mod:`~engine.pipeline.dryrun`
(``radflow rules test`` and ``POST /api/v1/routes/test``). It must not send anything, open
associations, or morph on the routing path: it freezes the morph steps, senders apply them.

Outbox rows written by routing
------------------------------
Table ``outbox`` (migration 3). Routing fills ``destination`` (a name from ``destinations:``
in the config), ``kind`` (``dicom`` or ``hl7``), ``source_table``/``source_id`` (the journal
entry: ``instances.id`` or ``hl7_messages.id``), ``route``, ``study_instance_uid`` (DICOM rows;
for ``per_study_order``), ``state='pending'``, ``attempts=0``, ``next_attempt_at=created_at=
updated_at=now`` (epoch seconds) and ``payload``, a JSON object (version 1, keys sorted):

``kind: "dicom"`` — one row per instance and destination::

    {
      "v": 1, "kind": "dicom",
      "route": "ct-to-pacs",                 # the route that fired
      "ruleset": "3f2a9c01b7d4",             # digest of the ruleset that decided
      "trigger": {"level": "instance"}       # or, for a fired series/study group:
                 # {"level": "study", "group_id": 7, "key": "<Study UID>",
                 #  "reason": "quiet" | "max_wait" | "study_complete", "instances": 120}
      "destination": {"name": "pacs", "type": "dimse"},
      "object": {                            # the original, as the journal keeps it
        "journal_id": 42, "object_id": "...", "version": 1,
        "spool_path": "objects/2026/11/25/16/<object_id>.dcm",   # relative to storage.spool_dir
        "sha256": "...", "size_bytes": 52000,                    # of the spool file
        "sop_class_uid": "...", "sop_instance_uid": "...", "transfer_syntax_uid": "...",
        "study_instance_uid": "...", "series_instance_uid": "..."
      },
      "morph": [ {"op": "deidentify", ...}, {"op": "set", "attr": "...", ...} ],
      "secret_fingerprint": "a1b2c3d4e5f60718" | null
    }

The sender reads the spool file, checks ``sha256`` if it wants to, and sends
``engine.morph.morph_bytes(data, engine.morph.steps_from_json(payload["morph"]),
engine.morph.MorphKeys(secret))``: with an empty ``morph`` that is the spooled bytes unchanged;
otherwise the same bytes on every attempt. ``secret_fingerprint`` is ``MorphKeys(secret).
fingerprint`` at routing time (null when there is no morph): if the current secret's
fingerprint differs, the morph would give other UIDs and pseudonyms than the ones routed —
treat it as a permanent error rather than sending different bytes. The morphed SOP Instance UID
is in the morphed bytes (UIDs may be remapped).

``kind: "hl7"`` — one row per accepted (AA) message and destination::

    {
      "v": 1, "kind": "hl7", "route": "orders-to-ris", "ruleset": "3f2a9c01b7d4",
      "trigger": {"level": "order"},
      "destination": {"name": "ris", "type": "hl7"},
      "message": {"journal_id": 17, "message_type": "ORM^O01", "control_id": "MSG0001",
                  "sending_application": "HIS", "sending_facility": "HOSP",
                  "charset": "8859/1"}
    }

The message's raw bytes are ``hl7_messages.raw`` of ``journal_id`` (never changed once AA),
sent as they are; ``charset`` is the character set intake read them with (MSH-18, or the
site's ``hl7.default_charset`` when MSH-18 is empty).

Journal entries get ``routed_at`` and ``routing_outcome`` (``routed``, ``grouped``: waiting in a
series/study group, ``discarded``: a stop route without destinations, ``unmatched``: no route
matched — kept, counted, listed by ``GET /api/v1/routes/unmatched``) in the same transaction.
"""
