"""`make up` / `make down`: the whole pipeline as long-running services on 127.0.0.1.

``python -m lambdaflow.ops.stack up`` starts, each in a session (and so a
process group) of its own, logging to ``<data>/logs/<service>.log``:

* ``broker``: `lambdaflow broker`, the embedded broker (skipped when
  KAFKA_BOOTSTRAP names a Kafka); the others find it through broker.json;
* ``archive`` and ``stream``: the two consumers, `lambdaflow archive` and `stream`;
* ``produce``: `lambdaflow produce --live`, a few valid events a second, stamped now;
* ``docs``: the dbt docs site, generated under the warehouse lock, then served;
* ``airflow``: the components `airflow standalone` runs (API server and UI,
  scheduler, DAG processor, triggerer) in the Airflow home of
  :mod:`lambdaflow.batch.airflow_home`, without the log servers (see :func:`lambdaflow.ops.stack.services.run_airflow`).

Each service is recorded in ``<data>/run/stack.json`` (replaced atomically) as
soon as it starts, so ``down`` can stop a half-started stack too. ``up`` waits
until every service is ready, prints the URLs and the Airflow login, and
returns; the services keep running.

``down`` stops exactly what stack.json records. A recorded PID is signalled
only while it is still the process ``up`` started (same start time and
command line in /proc), and then as a group: SIGTERM, and SIGKILL after a
grace period. Airflow runs each task in a process group of its own; such
processes are stopped too when they outlive their parents, recognised by
their ancestry while it lasts or by the stack id ``up`` puts in every
service's environment, and by their start time, never by name.

Ports: Airflow on LAMBDAFLOW_AIRFLOW_PORT (else AIRFLOW__API__PORT, else 8080),
the docs on LAMBDAFLOW_DOCS_PORT (else 8081); the broker picks a free one.
LAMBDAFLOW_LIVE_RATE sets the live producer's events per second.
"""
