"""Errors a user can cause. The CLI prints their message on one line and exits non-zero."""


class LambdaflowError(Exception):
    """A problem the user can fix; the message says how."""


class ConfigError(LambdaflowError):
    """An environment variable holds a value lambdaflow cannot use."""


class BrokerUnavailable(LambdaflowError):
    """No Kafka broker to talk to."""
