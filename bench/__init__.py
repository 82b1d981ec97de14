"""`make bench`: every layer measured against its ceiling or peer, side by side in one run.

``python -m bench [--quick] [--only SECTION] [--out DIR]`` writes summary.json,
report.md and PNG plots to bench/results/ (or DIR) and prints a short table.
Every row is judged by a target, so every row can fail, and a missed one says why.
Each comparison runs its variants alternately in the same run, several times,
and reports medians, because a small shared machine is noisy. Everything it
starts (brokers, workers, Airflow, dbt) runs on 127.0.0.1 in child processes
it stops by PID; its scratch files live in a temporary folder removed at the end.
"""
