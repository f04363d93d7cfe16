"""Modality Performed Procedure Steps (D2): what the scanner reports it did.

``model`` checks N-CREATE / N-SET content against PS3.4 Annex F and links a step to its worklist
items; ``service`` commits steps, their journal events and worklist changes, and tells the router
when a completed step's listed instances have all arrived. The step records they pass to the
store are in :mod:`engine.records.procedure_step`. Neither speaks DIMSE (see
``engine.ingress.dimse.mpps``) nor SQL (see ``engine.durable.sqlite.mpps``).
"""
