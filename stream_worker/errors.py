"""Errors a user can cause. The CLI prints their message on one line and exits non-zero."""


class LambdaflowError(Exception):
    """A problem the user can fix; the message says how."""


class InputError(LambdaflowError):
    """Bad input: a day, a definition, a damaged file. Trying again reads the same input, so
    Airflow tasks fail at once on it instead of retrying."""


class ConfigError(InputError):
    """An environment variable or the metrics definition holds a value lambdaflow cannot use."""


class BrokerUnavailable(LambdaflowError):
    """No Kafka broker to talk to."""
