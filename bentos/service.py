"""The riskops scoring service (BentoML 1.4): /score, /score_batch, /explain, plus /livez, /readyz, /metrics.

A thin shell over the scoring runtime (pipeline.scorer, pipeline.request, pipeline.export, pipeline.audit):
no training code is imported. Settings come from the `serve` section of params.yaml (path in RISKOPS_PARAMS,
default params.yaml). The model is the bundle `riskops-export` put in the BentoML model store, verified
against the sha recorded for it before anything is unpickled. Serve from the repository root:

    bentoml serve bentos.service:RiskService --host 127.0.0.1 --port 3000

Environment: RISK_API_TOKEN (bearer token required by the scoring endpoints when set),
RISK_AUDIT_DB_URL (SQLAlchemy URL of the audit database; default: SQLite at serve.audit.path).
"""
from __future__ import annotations

import hmac
import json
import logging
import os
import sys
import time
import uuid
from datetime import datetime, timezone

import bentoml
from bentoml.exceptions import InvalidArgument
from pydantic import TypeAdapter, ValidationError
from starlette.responses import Response

from pipeline.bundle import BundleError
from pipeline.core import get_logger, load_params
from pipeline.export import bento_bundle
from pipeline.request import ExplainAnswer, ScoreAnswer, applicant_model, invalid_rows, request_models
from pipeline.scorer import Scorer, check_sample
from pipeline.audit import audit_records, audit_trail, personal_policy

PARAMS = load_params(os.environ.get("RISKOPS_PARAMS", "params.yaml"))
SERVE = PARAMS["serve"]
MODEL_NAME = PARAMS["register"]["bento_model"]
Applicant = applicant_model(PARAMS)  # strict types, float32-representable numbers, the validate rules per applicant
BODIES = request_models(PARAMS, Applicant)  # each endpoint's body: no unknown fields at any level, lists limited
PROTECTED = ("/score", "/score_batch", "/explain")
ANSWERS, EXPLANATION = TypeAdapter(list[ScoreAnswer]), TypeAdapter(ExplainAnswer)
log = get_logger("service", fmt=SERVE.get("log_format", "json"))
logging.getLogger("riskops").propagate = False  # BentoML's root handler would print each line a second time


class ClientErrorsAtInfo(logging.Filter):
    "BentoML logs every refused request at ERROR with a traceback: a client's mistake (4xx) is one INFO line instead."
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        status = getattr(getattr(exc, "error_code", None), "value", 500)
        if isinstance(exc, ValidationError) or (isinstance(exc, InvalidArgument) or status < 500):
            record.levelno, record.levelname, record.exc_info, record.exc_text = logging.INFO, "INFO", None, None
            record.msg = f"{record.msg}: client error: %s"
            record.args = (*(record.args or ()), str(exc).splitlines()[0])
        return True


logging.getLogger("bentoml._internal.server.http_app").addFilter(ClientErrorsAtInfo())

SCORES = bentoml.metrics.Counter(name="riskops_scores", documentation="Rows scored, by risk grade and method",
                                 labelnames=["grade", "method"])
AUDIT = bentoml.metrics.Gauge(name="riskops_audit_records", documentation="Audit records: pending (spooled, not yet in "
                              "the database), failed (dead-lettered), written", labelnames=["state"])
RISK = bentoml.metrics.Histogram(name="riskops_risk_score", documentation="Risk scores (probability of default)",
                                 buckets=[0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0])


def load_model():
    """The exported bundle, verified, and why not when it cannot be served: with `serve.fallback: heuristic` the
    service answers with the documented fallback (flagged `method: fallback`, /readyz not ready); with `none` it
    refuses to start with one line naming the file and the reason."""
    try: return bento_bundle(MODEL_NAME, PARAMS), None
    except BundleError as e:
        if SERVE["fallback"] == "none": sys.exit(f"riskops service: refusing to start (serve.fallback: none): {e}")
        log.error("model not served (%s); answering with the heuristic fallback", e)
        return None, str(e)


if SERVE["fallback"] == "none": load_model()  # refuse before BentoML starts any worker


ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
INVALID = {"type": "object", "required": ["error", "detail"], "properties": {
    "error": {"type": "string", "example": "1 validation error for ScoreRequestIODescriptor"},
    "detail": {"type": "array", "items": {"type": "object", "properties": {
        "loc": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                "description": "where: the field, e.g. [\"applicants\", 0, \"AGE\"]"},
        "msg": {"type": "string", "description": "why, naming the bound, limit or rule"}, "type": {"type": "string"}}}}}}
REFUSALS = {"400": ("the body breaks the request model: each bad field (loc) and why (msg)", INVALID),
            "401": ("missing or wrong bearer token", ERROR), "415": ("the body is not application/json", ERROR),
            "503": ("overloaded: the adaptive batch waited longer than serve.max_latency_ms", ERROR)}


def document(spec: dict, token: bool) -> dict:
    "The service's OpenAPI document with the bearer scheme and the 400/401/415/503 answers of the scoring endpoints."
    spec.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer",
                                                                       "description": "RISK_API_TOKEN (when set)"}}
    for path in PROTECTED:
        post = spec.get("paths", {}).get(path, {}).get("post")
        if post is None: continue
        if token: post["security"] = [{"bearer": []}]
        post["responses"] |= {code: {"description": why, "content": {"application/json": {"schema": schema}}}
                              for code, (why, schema) in REFUSALS.items()}
    return spec


class RequestGate:
    """ASGI middleware in front of the scoring endpoints: when RISK_API_TOKEN is set they need
    `Authorization: Bearer <token>` (401 otherwise); their bodies are JSON (415 for another content type)."""
    def __init__(self, app, token: str | None = None):
        self.app, self.token = app, token

    async def _refuse(self, send, status: int, message: str, extra=()):
        body = ('{"error": "%s"}' % message).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), *extra]})
        await send({"type": "http.response.body", "body": body})

    async def _documented(self, scope, receive, send):
        "The OpenAPI document BentoML builds, completed by `document` (its schema objects cannot say these things)."
        start, chunks = {}, []
        async def keep(message):
            if message["type"] == "http.response.start": start.update(message)
            else: chunks.append(message.get("body", b""))
        await self.app(scope, receive, keep)
        body = b"".join(chunks)
        if start.get("status") == 200: body = json.dumps(document(json.loads(body), bool(self.token))).encode()
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/docs.json": return await self._documented(scope, receive, send)
        if scope["type"] == "http" and scope["path"].rstrip("/") in PROTECTED:
            headers = dict(scope["headers"])
            given = headers.get(b"authorization", b"")
            if self.token and not hmac.compare_digest(given, f"Bearer {self.token}".encode()):
                return await self._refuse(send, 401, "missing or wrong bearer token (Authorization: Bearer <token>)",
                                          [(b"www-authenticate", b"Bearer")])
            kind = headers.get(b"content-type", b"application/json").split(b";")[0].strip().lower()
            if scope.get("method") == "POST" and kind not in (b"application/json", b""):
                return await self._refuse(send, 415, "content-type: the body must be application/json")
        await self.app(scope, receive, send)


def _json(adapter: TypeAdapter, value) -> Response:
    """The answer checked against its model and serialized by pydantic in one step. BentoML's own response path
    for a typed return costs about 0.7 ms a request here (bench/serve.py); the annotation still documents it."""
    return Response(adapter.dump_json(adapter.validate_python(value)), media_type="application/json")


def _model_ref():
    "The exported model in the store; None when it is missing, so the service can still start on the fallback."
    ref = bentoml.models.BentoModel(MODEL_NAME)
    return ref if ref.stored is not None else None


@bentoml.service(name="riskops", workers=SERVE["workers"], threads=SERVE["threads"],
                 traffic={"timeout": SERVE["timeout_s"]},
                 logging={"access": {"enabled": bool(SERVE.get("access_log", True))}})
class RiskService:
    model_ref = _model_ref()  # recorded in the bento at build time

    def __init__(self) -> None:
        bundle, self.why = load_model()
        self.scorer = Scorer(bundle, PARAMS, check_sample(PARAMS))
        self.audit, self.personal = audit_trail(PARAMS), personal_policy(PARAMS)
        log.info("scoring with %s %s v%s (sha %s)%s", self.scorer.method, self.scorer.identity["model_name"],
                 self.scorer.identity["model_version"], self.scorer.identity["bundle_sha"][:12],
                 f"; model not served: {self.why}" if self.why else "")

    def __is_ready__(self) -> bool:
        "Ready when the model is loaded (the fallback answers, but is not ready) and the audit backlog is under its bound."
        return self.why is None and self.audit.healthy()

    def _audit(self, endpoint: str, request_id: str, records: list[dict], answers: list[dict], started: float) -> None:
        "Spool one record per applicant before the answer leaves (a failed append fails the request: never unaudited)."
        self.audit.write(audit_records(endpoint, request_id, records, answers, (time.perf_counter() - started) * 1000, self.personal))
        for state in ("pending", "failed", "written"): AUDIT.labels(state=state).set(getattr(self.audit, state))

    def _score(self, endpoint: str, applicants: list, request_id: str | None = None) -> list[dict]:
        start = time.perf_counter()
        records = [a.model_dump() for a in applicants]
        if SERVE.get("full_validation"):
            bad = invalid_rows(records, PARAMS)
            if bad: raise InvalidArgument(f"invalid applicants: {bad}")
        answers = self.scorer.answers(records)
        now, rid = datetime.now(timezone.utc).isoformat(timespec="milliseconds"), request_id or uuid.uuid4().hex
        for ans in answers:
            ans |= {"scored_at": now, "request_id": rid}
            SCORES.labels(grade=str(ans["risk_grade"]), method=ans["method"]).inc()
            RISK.observe(ans["risk_score"])
        if endpoint == "score_batch":  # a batch merges many callers' requests: one request id and audit record each
            for rec, ans in zip(records, answers):
                ans["request_id"] = uuid.uuid4().hex
                self._audit(endpoint, ans["request_id"], [rec], [ans], start)
        else: self._audit(endpoint, rid, records, answers, start)
        self._log(endpoint, rid if endpoint != "score_batch" else [a["request_id"] for a in answers], len(records), start)
        return answers

    def _log(self, endpoint: str, request_id, applicants: int, started: float) -> None:
        "One JSON line per request: endpoint, request id(s), model version, applicants, latency."
        ident = self.scorer.identity
        log.info("scored", extra={"endpoint": endpoint, "request_id": request_id, "model_name": ident["model_name"],
                                  "model_version": ident["model_version"], "method": self.scorer.method,
                                  "applicants": applicants, "latency_ms": round((time.perf_counter() - started) * 1000, 3)})

    @bentoml.api(input_spec=BODIES["score"])
    def score(self, applicants: list, request_id: str | None = None) -> list[ScoreAnswer]:
        "Score up to serve.max_list applicants: risk score, grade, scaled score, decision, reason codes."
        return _json(ANSWERS, self._score("score", applicants, request_id))

    @bentoml.api(batchable=True, max_batch_size=SERVE["max_batch_size"], max_latency_ms=SERVE["max_latency_ms"],
                 input_spec=BODIES["score_batch"])
    def score_batch(self, applicants: list) -> list[ScoreAnswer]:
        "The same answers as /score, with adaptive batching of concurrent calls."
        return self._score("score_batch", applicants)

    @bentoml.api(input_spec=BODIES["explain"])
    def explain(self, applicant: Applicant) -> ExplainAnswer:
        "Every field's exact contribution (log-odds) to one applicant's risk, with the applicant's values."
        start, record = time.perf_counter(), applicant.model_dump()
        answer = self.scorer.explain([record])[0]
        rid = uuid.uuid4().hex
        self._audit("explain", rid, [record], [answer], start)
        self._log("explain", rid, 1, start)
        return _json(EXPLANATION, answer)

    @bentoml.on_shutdown
    def flush_audit(self) -> None:
        "Move what is spooled to the database before the worker exits (what is left is replayed at the next start)."
        drained = self.audit.close()
        log.info("audit trail closed: %d records written, %d pending%s", self.audit.written, self.audit.pending,
                 "" if drained else " (left in the spool for the next start)")


RiskService.add_asgi_middleware(RequestGate, token=os.environ.get("RISK_API_TOKEN") or None)
