"""Kafka: the clients, the embedded broker, the broker watch, group and log identity."""
