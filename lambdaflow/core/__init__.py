"""The core: the event contract, the metrics, configuration and the data directory's files.

Imports no layer of the package, and never kafka-python, Airflow or dbt.
"""
