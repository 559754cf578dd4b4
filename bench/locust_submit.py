"""Locust users for bench/http_load.py: each submits a no-op job with
``POST /api/v1/jobs`` at a constant rate (``$BENCH_LOCUST_PER_USER`` a second),
authenticated with the token in ``$BENCH_TOKEN``."""

from __future__ import annotations

import os

from locust import HttpUser, constant_throughput, task

PER_USER = float(os.environ.get("BENCH_LOCUST_PER_USER", "5"))
TOKEN = os.environ.get("BENCH_TOKEN", "")


class Submitter(HttpUser):
    wait_time = constant_throughput(PER_USER)

    @task
    def submit(self) -> None:
        self.client.post("/api/v1/jobs", name="POST /api/v1/jobs",
                         json={"job_type": "noop", "organization": "bench",
                               "parameters": {}},
                         headers={"Authorization": f"Bearer {TOKEN}"})
