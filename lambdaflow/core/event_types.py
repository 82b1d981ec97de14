"""The event types the contract accepts (DESIGN.md), apart from the code that applies the contract, so
that a reader of the metrics definition (`lambdaflow query`) need not import Polars and DuckDB."""

EVENT_TYPES = ("signup", "login", "page_view", "order")
