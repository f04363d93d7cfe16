"""DICOM codecs both intake and delivery use: DIMSE wire encoding and radflow's implementation
identity, dataset walking, VR checks and character sets.

This ground-layer package owns how DICOM bytes and values are read and written. It must not own
associations, statuses, the store or routing: the DIMSE listener (``engine.ingress.dimse``) and
the DICOM senders (``engine.egress``) own those.
"""
