"""DIMSE ingress: pynetdicom's server, its thin handlers, and the durable C-STORE intake."""
