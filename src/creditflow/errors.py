"""User-facing errors: each becomes one line on stderr and a non-zero exit, never a traceback."""


class CreditflowError(Exception):
    """A problem the user can fix (bad spec, bad data, unknown model, unreachable server)."""

    exit_code = 2


class SpecError(CreditflowError):
    """An experiment or dataset spec is missing or invalid."""


class DataError(CreditflowError):
    """Input data is unreadable or does not match its dataset spec."""


class TrackingError(CreditflowError):
    """The MLflow tracking server or registry cannot be reached or refused a request."""
