"""The riskops scoring service (BentoML 1.4): /score, /score_batch, /explain, plus /livez, /readyz, /metrics.

A thin shell over the scoring runtime (pipeline.scorer, pipeline.request, pipeline.export, pipeline.audit,
pipeline.live): no training code is imported. Settings come from the `serve` section of params.yaml (path in
RISKOPS_PARAMS, default params.yaml). The model is the newest snapshot `riskops-export` (or a promotion or
rollback) put in the BentoML model store, verified against the shas recorded for it before anything is
unpickled; each worker follows the store (serve.follow_poll_s) and swaps a new snapshot in once it passed its
checks. With serve.shadow the challenger is also scored off the response path; serve.canary_share lets it
decide that share of applicants. /readyz names the served version. Serve from the repository root:

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
from bentoml.exceptions import BentoMLException, InvalidArgument
from pydantic import TypeAdapter, ValidationError
from starlette.responses import JSONResponse, Response

from pipeline.bundle import BundleError
from pipeline.core import get_logger, load_params
from pipeline.export import StoreWatch, bento_snapshot
from pipeline.live import Follower, Served, Shadow, decide, shadow_trail, store_loader
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


HTTP_LOG = logging.getLogger("bentoml._internal.server.http_app")  # where BentoML logs a refused request
HTTP_LOG.addFilter(ClientErrorsAtInfo())

SCORES = bentoml.metrics.Counter(name="riskops_scores", documentation="Rows scored, by risk grade and method",
                                 labelnames=["grade", "method"])
AUDIT = bentoml.metrics.Gauge(name="riskops_audit_records", documentation="Audit records: pending (spooled, not yet in "
                              "the database), failed (dead-lettered), written", labelnames=["state"])
RISK = bentoml.metrics.Histogram(name="riskops_risk_score", documentation="Risk scores (probability of default)",
                                 buckets=[0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0])
SWAPS = bentoml.metrics.Counter(name="riskops_model_swaps", documentation="Model snapshots from the store: swapped in, "
                                "refused (sha mismatch, failed warm-up) while the old one kept serving, retry (a transient failure, tried again), "
                                "challenger_failed (swapped in, its challenger left out: the champion serves alone)", labelnames=["result"])
SHADOW = bentoml.metrics.Counter(name="riskops_shadow_scores", documentation="Applicants scored by the model that did not "
                                 "decide, off the response path: scored, dropped (queue full), failed", labelnames=["result"])
CANARY, ID_COLUMN = float(SERVE.get("canary_share", 0.0)), PARAMS["data"].get("id")
FULL_VALIDATION = bool(SERVE.get("full_validation"))
LIVE: dict = {}  # this worker's RiskService, for /readyz (the middleware runs in the same process)


def load_model():
    """The newest exported snapshot, verified (champion and challenger), or refuse to start with one line naming
    the file and the reason when `serve.fallback: none`. (Workers load it again through their `Follower`.)"""
    try: return bento_snapshot(MODEL_NAME, PARAMS)
    except BundleError as e: sys.exit(f"riskops service: refusing to start (serve.fallback: none): {e}")


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
    `Authorization: Bearer <token>` (401 otherwise); their bodies are JSON (415 for another content type).
    It answers `POST /score` itself (`_scored`); the other endpoints go on to BentoML."""
    def __init__(self, app, token: str | None = None):
        self.app, self.token = app, token
        self.expected = f"Bearer {token}".encode() if token else b""

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

    async def _described(self, scope, receive, send):
        "/readyz as BentoML answers it (200 or 503), its body the served model: version, sha, challenger, snapshot."
        start, chunks = {}, []
        async def keep(message):
            if message["type"] == "http.response.start": start.update(message)
            else: chunks.append(message.get("body", b""))
        await self.app(scope, receive, keep)
        service = LIVE.get("service")
        body = b"".join(chunks) if service is None else \
            json.dumps({"ready": start.get("status") == 200, **service.describe()}).encode()
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() not in (b"content-length", b"content-type")]
        await send({**start, "headers": [*headers, (b"content-type", b"application/json"),
                                         (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http": return await self.app(scope, receive, send)
        path = scope["path"]
        if path == "/docs.json": return await self._documented(scope, receive, send)
        if path == "/readyz": return await self._described(scope, receive, send)
        if path.rstrip("/") in PROTECTED:
            given, kind = b"", b"application/json"
            for name, value in scope["headers"]:  # one pass over the raw headers (the last of a repeated one counts)
                if name == b"authorization": given = value
                elif name == b"content-type": kind = value
            if self.token and not hmac.compare_digest(given, self.expected):
                return await self._refuse(send, 401, "missing or wrong bearer token (Authorization: Bearer <token>)",
                                          [(b"www-authenticate", b"Bearer")])
            post = scope.get("method") == "POST"
            if post and kind != b"application/json" and kind.split(b";")[0].strip().lower() not in (b"application/json", b""):
                return await self._refuse(send, 415, "content-type: the body must be application/json")
            if post and path == "/score" and LIVE.get("service") is not None:
                return await self._scored(scope, receive, send)
        await self.app(scope, receive, send)

    async def _scored(self, scope, receive, send):
        """`POST /score` answered here, on the event loop: the body model BentoML built for the API (`SCORE_BODY`,
        so the same 400 answers naming each field), the same `RiskService._score` (audit, metrics, log, shadow,
        canary) and answer serializer as `RiskService.score`. BentoML's routing, request context, IO descriptors
        and its hop to a worker thread cost as much again as the rest of the request (bench/serve.py); its metrics,
        timeout and error middleware still wrap this one. The audit records are spooled before the answer is sent;
        what does not change the answer (the score metrics, the audit gauges, the log line) runs after it is sent."""
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect": return
            chunks.append(message.get("body", b"")); more = message.get("more_body", False)
        after = []
        try:
            body = SCORE_BODY.model_validate_json((chunks[0] if len(chunks) == 1 else b"".join(chunks)) or b"{}")
            answer = ANSWERS.dump_json(ANSWERS.validate_python(LIVE["service"]._score("score", body.applicants, body.request_id, after)))
        except ValidationError as e:  # as BentoML answers a body its IO descriptor refuses
            HTTP_LOG.error("Exception on %s [%s]", scope["path"], "POST", exc_info=e)
            response = JSONResponse({"error": f"{e.error_count()} validation error for {e.title}",
                                     "detail": e.errors(include_context=False, include_input=False)}, status_code=400)
        except BentoMLException as e:  # e.g. InvalidArgument from serve.full_validation: its status, its message
            HTTP_LOG.error("Exception on %s [%s]", scope["path"], "POST", exc_info=e)
            status = e.error_code.value
            response = JSONResponse({"error": str(e) if status < 500 else UNEXPECTED}, status_code=status)
        except Exception as e:
            HTTP_LOG.error("Exception on %s [%s]", scope["path"], "POST", exc_info=e)
            response = JSONResponse({"error": UNEXPECTED}, status_code=500)
        else:  # the headers starlette's Response writes for this body, then the server name, built without it
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", str(len(answer)).encode()), *ANSWER_HEADERS]})
            await send({"type": "http.response.body", "body": answer})
            for done in after: done()
            return
        response.headers["server"] = "BentoML Service/riskops"
        await response(scope, receive, send)


ANSWER_HEADERS = ((b"content-type", b"application/json"), (b"server", b"BentoML Service/riskops"))
UNEXPECTED = "An unexpected error has occurred, please check the server log."


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
                 logging={"access": {"enabled": bool(SERVE.get("access_log", True))}},
                 # no OpenTelemetry spans for the scoring endpoints: BentoML records them even at its default sample
                 # rate 0 (nothing exported), about a fifth of a /score request's CPU time (bench/serve.py)
                 tracing={"excluded_urls": list(PROTECTED)})
class RiskService:
    model_ref = _model_ref()  # recorded in the bento at build time

    def __init__(self) -> None:
        self.audit, self.personal = audit_trail(PARAMS), personal_policy(PARAMS)
        self.audit_gauges = [(AUDIT.labels(state=s), s) for s in ("pending", "failed", "written")]  # looked up once
        self.score_counts: dict = {}  # (grade, method) -> its riskops_scores child, looked up once
        for result in ("swapped", "refused", "retry", "challenger_failed"): SWAPS.labels(result=result)  # shown at 0 before the first swap
        check_rows = check_sample(PARAMS)
        fallback = Served(Scorer(None, PARAMS), why=f"no BentoML model {MODEL_NAME!r}; export the champion with `riskops-export`")
        self.follower = Follower(fallback, StoreWatch(MODEL_NAME), store_loader(MODEL_NAME, PARAMS, check_rows),
                                 SERVE.get("follow_poll_s", 5.0), on_result=self._followed)
        self.follower.check()  # the newest snapshot, checked, before the first request; then every follow_poll_s
        served = self.follower.served
        if served.why is not None and SERVE["fallback"] == "none":
            sys.exit(f"riskops service: refusing to start (serve.fallback: none): {served.why}")
        self.follower.start()
        self.shadow = Shadow(shadow_trail(PARAMS), self.personal, on_result=lambda r, n: SHADOW.labels(result=r).inc(n)) \
            if SERVE.get("shadow") else None
        LIVE["service"] = self
        d = served.describe()
        log.info("scoring with %s %s v%s (sha %s), challenger %s, shadow %s, canary share %s%s", served.champion.method,
                 d["model_name"], d["model_version"], d["bundle_sha"][:12], d["challenger_version"], self.shadow is not None,
                 CANARY, f"; model not served: {served.why}" if served.why else "")

    def _followed(self, result: str, detail) -> None:
        "Count a swap or a refusal (the Follower logs it)."
        SWAPS.labels(result=result).inc()

    @property
    def why(self) -> str | None:
        "Why no model is served (None when one is)."
        return self.follower.served.why

    def describe(self) -> dict:
        "The served model for /readyz: version, sha, challenger, snapshot, shadow and canary settings, swaps and refusals."
        return {**self.follower.served.describe(), "shadow": self.shadow is not None, "canary_share": CANARY,
                "swaps": self.follower.swaps, "refused": len(self.follower.refused),
                "challenger_failures": self.follower.challenger_failures, "retrying": len(self.follower.retrying)}

    def __is_ready__(self) -> bool:
        "Ready when the model is loaded (the fallback answers, but is not ready) and the audit backlog is under its bound."
        return self.why is None and self.audit.healthy()

    def _audit(self, endpoint: str, request_id: str, records: list[dict], answers: list[dict], started: float) -> None:
        "Spool one record per applicant before the answer leaves (a failed append fails the request: never unaudited)."
        self.audit.write(audit_records(endpoint, request_id, records, answers, (time.perf_counter() - started) * 1000, self.personal))

    def _gauges(self) -> None:
        "The audit trail's pending, failed and written records on /metrics."
        for gauge, state in self.audit_gauges: gauge.set(getattr(self.audit, state))

    def _score(self, endpoint: str, applicants: list, request_id: str | None = None, after: list | None = None) -> list[dict]:
        """The answers to `applicants`, audited (spooled) before they are returned. The score metrics, audit gauges
        and log line run before returning too, or are appended to `after` (callables) for the caller to run once
        the answer is sent."""
        start = time.perf_counter()
        served = self.follower.served  # read once: a swap during this request changes nothing for it
        records = [a.model_dump() for a in applicants]
        if FULL_VALIDATION:
            bad = invalid_rows(records, PARAMS)
            if bad: raise InvalidArgument(f"invalid applicants: {bad}")
        answers, canary = decide(served, records, CANARY, ID_COLUMN)
        now, rid = datetime.now(timezone.utc).isoformat(timespec="milliseconds"), request_id or uuid.uuid4().hex
        for ans in answers: ans |= {"scored_at": now, "request_id": rid}
        if endpoint == "score_batch":  # a batch merges many callers' requests: one request id and audit record each
            for rec, ans in zip(records, answers):
                ans["request_id"] = uuid.uuid4().hex
                self._audit(endpoint, ans["request_id"], [rec], [ans], start)
        else: self._audit(endpoint, rid, records, answers, start)
        if self.shadow is not None and served.challenger is not None:  # queued, scored by the shadow thread
            self.shadow.submit(served, endpoint, [(a["request_id"], 0 if endpoint == "score_batch" else i, rec, bool(c), now)
                                                  for i, (rec, a, c) in enumerate(zip(records, answers, canary))])
        latency_ms = (time.perf_counter() - start) * 1000
        tally = lambda: self._tally(endpoint, rid if endpoint != "score_batch" else [a["request_id"] for a in answers],
                                    answers, latency_ms, served, int(canary.sum()))
        if after is None: tally()
        else: after.append(tally)
        return answers

    def _tally(self, endpoint: str, request_id, answers: list[dict], latency_ms: float, served: Served, canary: int) -> None:
        "Count the answers by grade and method, observe their risk scores, set the audit gauges, log the request."
        try:
            for ans in answers:
                key = (ans["risk_grade"], ans["method"])
                child = self.score_counts.get(key)
                if child is None: child = self.score_counts[key] = SCORES.labels(grade=str(key[0]), method=key[1])
                child.inc()
                RISK.observe(ans["risk_score"])
            self._gauges()
            self._log(endpoint, request_id, len(answers), latency_ms, served, canary)
        except Exception:  # the answers are given and audited: a failed count or log line does not fail the request
            log.exception("counting or logging a %s request failed", endpoint)

    def _log(self, endpoint: str, request_id, applicants: int, latency_ms: float, served: Served, canary: int = 0) -> None:
        "One JSON line per request: endpoint, request id(s), model version, applicants, how many the challenger decided, latency."
        ident = served.champion.identity
        log.info("scored", extra={"endpoint": endpoint, "request_id": request_id, "model_name": ident["model_name"],
                                  "model_version": ident["model_version"], "method": served.champion.method,
                                  "applicants": applicants, "canary": canary, "latency_ms": round(latency_ms, 3)})

    @bentoml.api(input_spec=BODIES["score"])
    def score(self, applicants: list, request_id: str | None = None) -> list[ScoreAnswer]:
        """Score up to serve.max_list applicants: risk score, grade, scaled score, decision, reason codes. (Over HTTP,
        `RequestGate._scored` answers it with the same body model and `_score`; this method is BentoML's schema.)"""
        return _json(ANSWERS, self._score("score", applicants, request_id))

    @bentoml.api(batchable=True, max_batch_size=SERVE["max_batch_size"], max_latency_ms=SERVE["max_latency_ms"],
                 input_spec=BODIES["score_batch"])
    def score_batch(self, applicants: list) -> list[ScoreAnswer]:
        "The same answers as /score, with adaptive batching of concurrent calls."
        return self._score("score_batch", applicants)

    @bentoml.api(input_spec=BODIES["explain"])
    def explain(self, applicant: Applicant) -> ExplainAnswer:
        "Every field's exact contribution (log-odds) to one applicant's risk, with the applicant's values."
        start, record, served = time.perf_counter(), applicant.model_dump(), self.follower.served
        answers, canary = decide(served, [record], CANARY, ID_COLUMN, how="explain")  # the model that decides explains
        rid = uuid.uuid4().hex
        self._audit("explain", rid, [record], answers, start)
        self._gauges()
        self._log("explain", rid, 1, (time.perf_counter() - start) * 1000, served, int(canary.sum()))
        return _json(EXPLANATION, answers[0])

    @bentoml.on_shutdown
    def flush_audit(self) -> None:
        "Move what is spooled to the database before the worker exits (what is left is replayed at the next start)."
        self.follower.stop()
        if self.shadow is not None and not self.shadow.close(): log.warning("shadow records left in the spool for the next start")
        drained = self.audit.close()
        log.info("audit trail closed: %d records written, %d pending%s", self.audit.written, self.audit.pending,
                 "" if drained else " (left in the spool for the next start)")


SCORE_BODY = RiskService.apis["score"].input_spec  # /score's body model as BentoML built it from BODIES["score"]
RiskService.add_asgi_middleware(RequestGate, token=os.environ.get("RISK_API_TOKEN") or None)
