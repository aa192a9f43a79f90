"""User-facing errors: each becomes one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations


class CreditflowError(Exception):
    """A problem the user can fix (bad spec, bad data, unknown model, unreachable server)."""

    exit_code = 2


class SpecError(CreditflowError):
    """An experiment or dataset spec is missing or invalid."""


class DataError(CreditflowError):
    """Input data is unreadable or does not match its dataset spec."""


class TrackingError(CreditflowError):
    """The MLflow tracking server or registry cannot be reached or refused a request."""


class BadRequest(ValueError):
    """A scoring request the client must fix: the HTTP status and a message safe to return."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (MLflow's `.message` when it has one), or its type's name."""
    text = str(getattr(exc, "message", "") or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def without_password(url: str) -> str:
    """A URL without its password, for messages and logs."""
    scheme, _, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    return f"{scheme}://{creds.split(':')[0]}{at}{host}" if at else url
