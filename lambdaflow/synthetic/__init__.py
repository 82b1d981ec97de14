"""Synthetic events: the generator and the producer that sends them."""
