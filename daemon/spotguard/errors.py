"""Exceptions spotguard raises across module boundaries.

SpotguardError
├── ConfigError            invalid settings; start-up stops with exit code 2
├── IdentityError          cannot tell which VM this agent runs on, or it contradicts the node
└── ImdsError              an IMDS request failed; ``outcome`` is its metric label
    ├── ImdsHttpError      IMDS answered with an HTTP error status
    ├── ImdsUnavailable    timeout or connection failure
    └── InvalidDocument    IMDS answered 200 with something that is not a valid document
"""

from __future__ import annotations


class SpotguardError(Exception):
    pass


class ConfigError(SpotguardError):
    pass


class IdentityError(SpotguardError):
    pass


class ImdsError(SpotguardError):
    def __init__(self, message: str, *, outcome: str) -> None:
        super().__init__(message)
        #: value of the ``outcome`` label of ``spotguard_imds_requests_total``
        self.outcome = outcome


class ImdsHttpError(ImdsError):
    def __init__(self, status: int, body: str, *, retry_after: float | None = None) -> None:
        if status == 429:
            outcome = "throttled"
        elif status >= 500:
            outcome = "http_5xx"
        else:
            outcome = "http_4xx"
        super().__init__(f"IMDS answered HTTP {status}: {body[:200]!r}", outcome=outcome)
        self.status = status
        self.body = body
        self.retry_after = retry_after


class ImdsUnavailable(ImdsError):
    def __init__(self, message: str, *, timeout: bool) -> None:
        super().__init__(message, outcome="timeout" if timeout else "connection_error")


class InvalidDocument(ImdsError):
    def __init__(self, reason: str) -> None:
        super().__init__(f"invalid IMDS document: {reason}", outcome="invalid_document")
        self.reason = reason
