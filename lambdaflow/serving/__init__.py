"""The serving layer: answers, status and reconciliation, read from published files only."""
