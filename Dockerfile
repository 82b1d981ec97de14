# The image of every lambdaflow and Airflow container in docker-compose.yml: Python 3.11
# with the locked requirements (plus the PostgreSQL drivers Airflow needs) in /venv, and the
# checkout at /app. Each container runs it with nothing shared but Kafka, MinIO and Airflow's
# database, as on hosts of their own. Rebuilt by `docker compose up --build` after a change.
FROM python:3.11-slim-bookworm

ENV PATH=/venv/bin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONPATH=/app

COPY requirements.txt /tmp/requirements.txt
RUN python -m venv /venv \
    && /venv/bin/pip install --quiet --disable-pip-version-check uv==0.13.9 \
    && /venv/bin/uv pip install --python /venv/bin/python --quiet --compile-bytecode \
        -r /tmp/requirements.txt psycopg2-binary==2.9.13 asyncpg==0.32.0

COPY . /app
RUN /venv/bin/uv pip install --python /venv/bin/python --quiet --no-deps /app \
    && /venv/bin/python -m compileall -q /app/lambdaflow /app/stream_worker /app/dags

WORKDIR /app
