"""What a sender may say about a delivery that did not succeed: transient or permanent.

Senders only classify (DESIGN.md, "senders only classify"): they raise
:class:`TransientDeliveryError` when the same bytes may succeed later (peer down, timeout, Out of
Resources, HTTP 5xx/429, HL7 ``AR``) and :class:`PermanentDeliveryError` when they never will
(the peer refuses this content). The dispatcher alone turns that into attempts, backoff, circuit
breaking and dead letters. This module holds no policy and imports nothing but the root errors.
"""

from __future__ import annotations

from engine.errors import RadflowError


class DeliveryError(RadflowError):
    """A delivery failed; ``reason`` is a short label for metrics and logs, ``detail`` the
    peer's own words (a status, an HTTP body excerpt, an ERR segment)."""

    reason = "delivery_failed"
    transient: bool = True
    #: False when the failure was found before anything reached the peer (radflow's own
    #: bytes or row are at fault): it says nothing of the destination's health, so it must
    #: not move the destination's circuit breaker either way.
    reached_peer: bool = True

    def __init__(self, message: str, *, reason: str | None = None,
                 status: int | str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason
        self.status = status


class TransientDeliveryError(DeliveryError):
    """The destination cannot take it now; the same bytes may succeed later."""

    reason = "transient"
    transient = True


class NotHereDeliveryError(DeliveryError):
    """Another process should send this row (it holds what the row needs, such as the
    association a modality keeps open for its commitment report): not an attempt, nothing
    was sent. The dispatcher gives the attempt back and offers the row again after
    ``retry_in`` seconds, to whichever process claims it then."""

    reason = "not_here"
    transient = True
    reached_peer = False

    def __init__(self, message: str, *, retry_in: float) -> None:
        super().__init__(message)
        self.retry_in = retry_in


class PermanentDeliveryError(DeliveryError):
    """The destination (or radflow) will never accept this row as it is: dead-letter it."""

    reason = "permanent"
    transient = False


class IntegrityFailure(PermanentDeliveryError):
    """The spooled bytes are not the ones recorded at intake (size or SHA-256 differs, or the
    file is gone): sending them would forward a damaged object, and a retry reads the same
    damage. Found before a byte leaves, so it never counts against the destination."""

    reason = "integrity_failed"
    reached_peer = False
