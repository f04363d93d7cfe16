"""The IHE ATNA audit trail: what radflow records (records.py) and how it gathers and queues it
(trail.py). The message format and syslog framing live in ``engine.dicom.audit``; the slot other
parts report through is ``engine.observability.audit_sink``."""
