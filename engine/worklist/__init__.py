"""The worklist (D2): HL7 orders become Modality Worklist items that scanners query.

``model`` (items, statuses, planned changes), ``mapping`` (the YAML HL7 → worklist mapping and
the pure ``plan``), ``charset`` (HL7 → DICOM character sets), ``query`` (MWL C-FIND matching
and answers), ``types`` (the contract with HL7 intake) and ``service`` (durable application,
idempotency, retention). Import the modules themselves; this package file stays empty so the
store can import ``model`` and ``query`` without pulling in the service.
"""
