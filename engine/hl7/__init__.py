"""HL7 v2 codecs both intake and delivery use: the message model, MLLP framing, ACK building.

This ground-layer package owns bytes-to-structure and structure-to-bytes for HL7 v2 and its MLLP
envelope. It must not open sockets, log, touch the store or decide routing: the MLLP listener
(``engine.ingress.hl7``) and the HL7 sender (``engine.egress.hl7``) own the connections.
"""
