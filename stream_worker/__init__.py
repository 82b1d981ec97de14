"""lambdaflow's Kafka-facing code: the event contract, the embedded broker, the
workers of both consumer groups, and the `lambdaflow` command line."""
