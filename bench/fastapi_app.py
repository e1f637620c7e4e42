"""A minimal FastAPI app serving the same model with the same reason codes: the baseline for bench/serve.py.

Not part of the product. Run: BENCH_MODEL=models/xgboost.joblib uvicorn bench.fastapi_app:app --workers 1
"""
import os
from typing import Annotated

from fastapi import Body, FastAPI
from pydantic import Field

from pipeline.core import load_params, read_json
from pipeline.service import applicant_model, check_sample, load_scorer

params = load_params(os.environ.get("RISKOPS_PARAMS", "params.yaml"))
Applicant = applicant_model(params)
scorer, _ = load_scorer(os.environ.get("BENCH_MODEL", "models/xgboost.joblib"),
                        read_json(os.environ.get("BENCH_DECISION", "models/decision.json")), params,
                        {"registered_model": "bench", "version": "local"}, check_sample(params))
app = FastAPI()


@app.post("/score")
def score(applicants: Annotated[list[Applicant], Field(min_length=1, max_length=params["serve"]["max_list"]), Body(embed=True)]):
    return scorer.score([a.model_dump() for a in applicants])
