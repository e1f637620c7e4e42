"""Load test of the scoring service: 60 s, headless, 127.0.0.1 only; fails (exit 1) on any failed request.

Start the service (README "Serving"), then from the repository root:
    locust -f bench/locustfile.py --headless -u 16 -r 16 -t 60s --host http://127.0.0.1:3000
Set RISK_API_TOKEN to the service's token if it requires one.
"""
import json
import os
import random
from pathlib import Path

import pandas as pd
from locust import FastHttpUser, between, events, task

ROOT = Path(__file__).resolve().parents[1]
_test = pd.read_parquet(ROOT / "data/split/test.parquet")
_target = __import__("yaml").safe_load((ROOT / "params.yaml").read_text())["data"]["target"]
ROWS = json.loads(_test.drop(columns=_target).head(500).to_json(orient="records"))
HEADERS = {"Authorization": f"Bearer {os.environ['RISK_API_TOKEN']}"} if os.environ.get("RISK_API_TOKEN") else {}


class Applicant(FastHttpUser):
    wait_time = between(0, 0.01)

    @task(8)
    def score_one(self):
        self.client.post("/score", json={"applicants": [random.choice(ROWS)]}, headers=HEADERS)

    @task(1)
    def score_five(self):
        self.client.post("/score", json={"applicants": random.sample(ROWS, 5)}, headers=HEADERS)

    @task(1)
    def score_batch(self):
        self.client.post("/score_batch", json={"applicants": [random.choice(ROWS)]}, headers=HEADERS)


@events.quitting.add_listener
def _fail_on_errors(environment, **_):
    if environment.stats.total.num_failures: environment.process_exit_code = 1
