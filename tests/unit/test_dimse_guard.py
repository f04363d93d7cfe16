"""engine.ingress.dimse.guard: the pynetdicom internals it wraps, and how it names what a
request lacks. The behaviour on the wire is tested from outside in
tests/integration/test_dimse_hardening.py."""

from __future__ import annotations

import pytest
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_STORE_RQ, DIMSEMessage
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


def _store_rq(sop_instance_uid: str) -> DIMSEMessage:
    message = C_STORE_RQ()
    command = message.command_set
    command.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    command.CommandField = 0x0001
    command.MessageID = 7
    command.Priority = 2
    command.CommandDataSetType = 0x0000
    command.AffectedSOPInstanceUID = sop_instance_uid
    message.context_id = 1
    return message


@pytest.mark.filterwarnings("ignore")
def test_a_request_pynetdicom_refuses_becomes_a_marked_primitive_without_the_value() -> None:
    message = _store_rq("1." + "2" * 70)  # pydicom warns; the peer is who sends this
    with pytest.raises(ValueError):
        message.message_to_primitive()
    primitive = guard._lenient(message)()
    assert isinstance(primitive, C_STORE) and primitive.MessageID == 7
    assert primitive.AffectedSOPInstanceUID is None
    assert primitive._radflow_invalid == {"AffectedSOPInstanceUID":
                                          "must not exceed 64 characters"}
    assert primitive._context_id == 1


def test_a_valid_request_converts_as_pynetdicom_converts_it() -> None:
    primitive = guard._lenient(_store_rq("1.2.3"))()
    assert primitive.AffectedSOPInstanceUID == "1.2.3"
    assert getattr(primitive, "_radflow_invalid", None) is None


@pytest.mark.filterwarnings("ignore")
def test_without_a_message_id_pynetdicom_aborts_as_before() -> None:
    message = _store_rq("1." + "2" * 70)  # pydicom warns; the peer is who sends this
    del message.command_set.MessageID
    with pytest.raises(ValueError):
        guard._lenient(message)()
