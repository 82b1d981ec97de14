"""`make chaos`: the seeded fault scenario (:mod:`chaos.run`), run as ``python -m chaos``."""
