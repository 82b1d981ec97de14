"""The speed layer: the stream worker, its state and replay (consumer group `speed`)."""
