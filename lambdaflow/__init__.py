"""lambdaflow: a Lambda-architecture analytics pipeline.

The package's homes, and which may import which (README, "Layout"):

* :mod:`lambdaflow.core`: the event contract, the metrics, configuration, the data directory's
  files and their readers. Imports no layer, and never Kafka, Airflow or dbt.
* :mod:`lambdaflow.kafka`: the Kafka clients, the embedded broker and the partitioned consumer loop.
* :mod:`lambdaflow.batch`: the batch layer (archiver, raw store writes, the dbt build and publish).
* :mod:`lambdaflow.serving`: answers, status and reconciliation, from published files only.
* :mod:`lambdaflow.synthetic`: the event generator and producer.
* :mod:`lambdaflow.cli` and :mod:`lambdaflow.ops`: the shells (the `lambdaflow` command, the demo, the stack).

The speed layer is the :mod:`stream_worker` package beside it.
"""
