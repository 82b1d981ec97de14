"""Errors a user can cause. The CLI prints their message on one line and exits non-zero."""


def first_line(error: BaseException) -> str:
    """What an error says, on one line (its first), or its type when it says nothing."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


class LambdaflowError(Exception):
    """A problem the user can fix; the message says how."""


class InputError(LambdaflowError):
    """Bad input: a day, a definition, a damaged file. Trying again reads the same input, so
    Airflow tasks fail at once on it instead of retrying."""


class ConfigError(InputError):
    """An environment variable or the metrics definition holds a value lambdaflow cannot use."""


class BrokerUnavailable(LambdaflowError):
    """No Kafka broker to talk to."""
