"""engine.ingress.dimse.guard: the pynetdicom internals it wraps, and how it names what a
request lacks. The behaviour on the wire is tested from outside in
tests/integration/test_dimse_hardening.py."""

from __future__ import annotations

from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dimse_primitives import C_ECHO, C_STORE, N_SET

from engine.ingress.dimse import guard


def test_the_pynetdicom_internals_it_wraps_are_there() -> None:
    assoc = Association(AE(), "acceptor")
    assert callable(assoc._serve_request)
    assert isinstance(assoc._accepted_cx, dict)
    assert callable(assoc.dimse.receive_primitive)
    assert assoc.dimse.message is None
    assert callable(DIMSEMessage().decode_msg)
    for cls in guard._FAILURE:
        request = cls()
        assert request.MessageIDBeingRespondedTo is None
        assert not request.is_valid_request
        assert all(hasattr(request, k) for k in request.REQUEST_KEYWORDS)


def test_missing_parameters_are_named_as_the_service_requires() -> None:
    store = C_STORE()
    store.MessageID = 1
    store.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    store.Priority = 2
    assert guard.missing_parameters(store) == ["AffectedSOPInstanceUID", "DataSet"]
    echo = C_ECHO()
    echo.MessageID = 3
    assert guard.missing_parameters(echo) == ["AffectedSOPClassUID"]
    assert "RequestedSOPInstanceUID" in guard.missing_parameters(N_SET())
