"""HL7 v2 at the protocol level: MLLP framing, a fast read-only message model, ACK building."""
