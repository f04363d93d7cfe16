"""Egress (stage 7): one sender per destination type, and the dispatcher that drives them (D3).

``dispatcher`` leases outbox rows per destination and owns attempts, backoff, the circuit
breaker and dead letters; ``dimse``, ``dicomweb``, ``hl7``, ``fhir`` and ``mpps`` deliver a batch
of :class:`~engine.egress.delivery.Delivery` and classify each failure as transient or permanent
(``errors``). Nothing in this package writes the outbox except through the store's outbox API.
"""
