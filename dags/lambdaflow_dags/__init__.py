"""Logic the DAG files in dags/ call, imported by full path (lambdaflow_dags.<module>)."""
