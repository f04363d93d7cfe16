"""The worklist (D2): HL7 orders become Modality Worklist items that scanners query.

``model`` (the status life cycle, planned changes, keyword tables), ``mapping`` (the YAML HL7 →
worklist mapping and the pure ``plan``), ``charset`` (HL7 → DICOM character sets), ``query``
(MWL C-FIND matching and answers), ``types`` (the contract with HL7 intake) and ``service``
(durable application, idempotency, retention). The item itself and the query constraints are
records shared with the store, in :mod:`engine.records`. Import the modules themselves; this
package file stays empty.
"""
