"""HL7 v2 intake: the MLLP listener and the durable HL7 intake (codecs live in engine.hl7)."""
