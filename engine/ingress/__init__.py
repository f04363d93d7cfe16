"""Ingress: protocol listeners (DIMSE, MLLP) that answer only after the durable commit (D1)."""
