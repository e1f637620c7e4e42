"""A minimal FastAPI app serving the same model with the same reason codes: the baseline for bench/serve.py.

Not part of the product. Run: BENCH_MODEL=models/bundle uvicorn bench.fastapi_app:app --workers 1
"""
import os
from typing import Annotated

from fastapi import Body, FastAPI
from pydantic import Field

from pipeline.bundle import resolve
from pipeline.core import load_params
from pipeline.request import applicant_model
from pipeline.scorer import Scorer, check_sample

params = load_params(os.environ.get("RISKOPS_PARAMS", "params.yaml"))
Applicant = applicant_model(params)
scorer = Scorer(resolve(os.environ.get("BENCH_MODEL", "models/bundle"), params), params, check_sample(params))
app = FastAPI()


@app.post("/score")
def score(applicants: Annotated[list[Applicant], Field(min_length=1, max_length=params["serve"]["max_list"]), Body(embed=True)]):
    return scorer.answers([a.model_dump() for a in applicants])
