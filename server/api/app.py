"""The FastAPI application: routes, OpenAI-shaped errors, API key, request ids, health/ready,
metrics, and the drain state the `serve` command flips on SIGTERM."""

from __future__ import annotations

import asyncio
import hmac
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.api.async_engine import AsyncEngine, EngineDeadError
from server.api.errors import ERROR_RESPONSES, APIError, validation_error
from server.api.limits import RequestLimits
from server.api.metrics import Metrics
from server.api.models import ServedModels
from server.api.params import check_params
from server.api.playground import install_playground
from server.api.protocol import ChatCompletionRequest, CompletionRequest, StreamOptions
from server.api.responses import Shape, full_response, stream
from server.api.serving import Choice, OpenAIServing
from server.api.tokenize import DetokenizeRequest, TokenizeRequest, detokenize, tokenize
from server.config import EngineConfig

log = logging.getLogger("unmask.api")
VERSION = "0.1.0"
KEYED_PATHS = frozenset({"/tokenize", "/detokenize"})  # behind the API key like /v1/*


@dataclass
class ServerSettings:
    engine: EngineConfig
    served_model_name: str  # the primary name, reported in every response
    served_model_aliases: tuple[str, ...] = ()  # further names requests may use
    api_key: str | None = None
    max_queued_requests: int | None = None  # waiting + running choices; beyond → 503
    in_process_engine: bool = False
    max_body_bytes: int = 16 << 20  # larger request bodies get 413
    body_timeout_s: float = 30.0  # a body not complete this long after its last chunk → 408
    tool_call_parser: str = "auto"  # a name in server.api.tools.PARSERS, "auto" or "none"
    limits: RequestLimits = field(default_factory=RequestLimits)
    max_queued_tokens: int | None = None  # prompt + max_tokens of in-flight choices; → 503
    log_requests: bool = False  # prompts and outputs in the log (off: ids and sizes only)
    cors_origins: tuple[str, ...] = ()  # CORS is off unless origins are given


class AppState:
    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.models = ServedModels((settings.served_model_name, *settings.served_model_aliases),
                                   settings.engine.model)
        self.metrics = Metrics(settings.served_model_name)
        self.engine = AsyncEngine(settings.engine, settings.in_process_engine,
                                  self.metrics.on_step)
        self.serving: OpenAIServing | None = None
        self.draining = False
        self.in_flight = 0  # engine requests of responses not yet complete
        self.in_flight_tokens = 0  # their prompt + max_tokens

    async def load(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await asyncio.to_thread(self.engine.start, loop)
            from server.model.tokenizer import load_tokenizer

            tok = await asyncio.to_thread(load_tokenizer, self.engine.info.model_dir)
        except Exception:
            log.exception("engine start-up failed")
            return
        from server.api.tools import get_tool_parser

        parser = get_tool_parser(self.settings.tool_call_parser, tok.hf.chat_template)
        self.serving = OpenAIServing(self.engine, tok, self.settings.served_model_name,
                                     self.metrics, parser)
        i = self.engine.info
        log.info("ready: model=%s arch=%s mode=%s device=%s dtype=%s block=%d pages=%d "
                 "attention=%s acceptance=%s tool_parser=%s", i.model_dir, i.architecture,
                 i.mode, i.device, i.dtype, i.block_size, i.num_pages, i.attention_backend,
                 i.acceptance_backend, type(parser).__name__ if parser else None)


def create_app(settings: ServerSettings) -> FastAPI:
    state = AppState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader = asyncio.create_task(state.load())
        yield
        loader.cancel()
        await asyncio.to_thread(state.engine.shutdown)

    app = FastAPI(title="unmask", version=VERSION, lifespan=lifespan)
    app.state.unmask = state
    _install_errors(app)
    app.add_middleware(Guard, state=state)
    if settings.cors_origins:  # outermost: preflights carry no API key
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                           allow_methods=["GET", "POST"], allow_headers=["*"])
    _install_routes(app, state)
    install_playground(app, settings.api_key is not None)
    return app


def _json_error(e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(_: Request, e: APIError) -> JSONResponse:
        return _json_error(e)

    @app.exception_handler(RequestValidationError)
    async def validation(_: Request, e: RequestValidationError) -> JSONResponse:
        return _json_error(validation_error(e.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
        return _json_error(APIError(e.status_code, str(e.detail)))

    @app.exception_handler(UnicodeError)
    async def bad_text(_: Request, e: UnicodeError) -> JSONResponse:
        return _json_error(APIError(400, "the request holds text that is not valid Unicode "
                                         "(e.g. a lone surrogate)"))

    @app.exception_handler(RecursionError)
    async def too_deep(_: Request, e: RecursionError) -> JSONResponse:
        return _json_error(APIError(400, "the request is nested too deeply"))

    @app.exception_handler(Exception)
    async def internal(_: Request, e: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return _json_error(APIError(500, "internal server error"))


class Guard:
    """Pure ASGI middleware (keeps disconnect detection intact): API key, JSON content type,
    503 while draining, and the request id (X-Request-Id in, echoed out)."""

    def __init__(self, app: ASGIApp, state: AppState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        error = self._check(scope, headers)
        if error is not None:
            await _json_error(error)(scope, receive, send)
            return
        rid = headers.get("x-request-id") or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        over: list[APIError] = []
        receive = self._limited(receive, over)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []),
                                      (b"x-request-id", rid.encode("latin-1"))]
            await send(message)

        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if over:  # the body outgrew the limit: a 413 replaces the app's own answer
                if not started and message["type"] == "http.response.start":
                    started = True
                    await _json_error(over[0])(scope, receive, send_with_id)
                return
            started = started or message["type"] == "http.response.start"
            await send_with_id(message)

        try:
            await self.app(scope, receive, tracked)
        except APIError as e:  # raised by the body limit while the body is read
            if not started:
                await _json_error(over[0] if over else e)(scope, receive, send_with_id)
        except Exception:  # noqa: BLE001 - a 500 without a trace; the connection stays usable
            log.exception("unhandled error")
            if not started:
                await _json_error(APIError(500, "internal server error"))(scope, receive,
                                                                          tracked)

    def _limited(self, receive: Receive, over: list[APIError]) -> Receive:
        """A body that grows past the limit (chunked uploads included) ends in a 413; one that
        stalls for `body_timeout_s` between chunks ends in a 408 and the connection closes."""
        seen, done = 0, False
        limit, timeout = self.state.settings.max_body_bytes, self.state.settings.body_timeout_s

        async def counted() -> Message:
            nonlocal seen, done
            if done:  # after the body: disconnect detection waits as long as it likes
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), timeout)
            except TimeoutError:
                over.append(APIError(408, f"request body not received within {timeout:g} s",
                                     headers={"Connection": "close"}))
                raise over[-1] from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                done = not message.get("more_body", False)
                if seen > limit:
                    over.append(APIError(413, f"request body larger than {limit} bytes"))
                    raise over[-1]
            else:
                done = True
            return message

        return counted

    def _check(self, scope: Scope, headers: dict[str, str]) -> APIError | None:
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.state.settings.max_body_bytes:
            return APIError(413, f"request body larger than "
                                 f"{self.state.settings.max_body_bytes} bytes")
        if not scope["path"].startswith("/v1/") and scope["path"] not in KEYED_PATHS:
            return None
        key = self.state.settings.api_key
        if key is not None and not hmac.compare_digest(
                headers.get("authorization", "").encode(), f"Bearer {key}".encode()):
            return APIError(401, "Unauthorized", "AuthenticationError")
        if scope["method"] == "POST":
            ctype = headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype != "application/json":
                return APIError(400, "Content-Type must be application/json")
            if self.state.draining:
                return APIError(503, "the server is shutting down", headers={"Retry-After": "5"})
        return None


def _install_routes(app: FastAPI, state: AppState) -> None:
    def serving() -> OpenAIServing:
        if state.serving is None:
            raise APIError(503, "the model is still loading", headers={"Retry-After": "5"})
        if not state.engine.is_alive():  # new work after an engine death: another replica
            raise APIError(503, "the engine is not running")
        return state.serving

    @app.get("/health")
    async def health() -> Response:
        if state.engine.start_error or not state.engine.is_alive():
            return JSONResponse({"status": "unhealthy"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/ready")
    async def ready() -> Response:
        ok = state.serving is not None and state.engine.is_alive() and not state.draining
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/version")
    async def version() -> dict[str, str]:
        return {"version": VERSION}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models", responses=ERROR_RESPONSES)
    async def models() -> dict[str, Any]:
        return state.models.cards(state.engine.info)

    @app.get("/v1/models/{model:path}", responses=ERROR_RESPONSES)
    async def model_card(model: str) -> dict[str, Any]:  # `path`: hub ids hold a slash
        return state.models.card(model, state.engine.info)

    @app.post("/tokenize", responses=ERROR_RESPONSES)
    async def tokenize_route(req: TokenizeRequest) -> dict[str, Any]:
        s = serving()
        state.models.check(req.model)
        return tokenize(s.tok, req, state.engine.info.max_model_len)

    @app.post("/detokenize", responses=ERROR_RESPONSES)
    async def detokenize_route(req: DetokenizeRequest) -> dict[str, Any]:
        s = serving()
        state.models.check(req.model)
        return detokenize(s.tok, req)

    def admit(req: CompletionRequest | ChatCompletionRequest) -> OpenAIServing:
        s = serving()
        state.models.check(req.model)
        check_params(req)
        state.settings.limits.check(req, state.engine.info.max_model_len)
        return s

    @app.post("/v1/completions", responses=ERROR_RESPONSES)
    async def completions(req: CompletionRequest, raw: Request) -> Response:
        s = admit(req)
        pairs = s.completion_choices(req, raw.state.request_id)
        shape = Shape(False, raw.state.request_id, s.model_name, req.return_token_ids,
                      s.logprob_format if req.logprobs is not None else None)
        return await _respond(state, s, raw, pairs, shape, req.n, req.stream,
                              req.stream_options, req.echo)

    @app.post("/v1/chat/completions", responses=ERROR_RESPONSES)
    async def chat(req: ChatCompletionRequest, raw: Request) -> Response:
        s = admit(req)
        pairs = s.chat_choices(req, raw.state.request_id)
        shape = Shape(True, raw.state.request_id, s.model_name, req.return_token_ids,
                      s.logprob_format if req.logprobs else None)
        return await _respond(state, s, raw, pairs, shape, req.n, req.stream,
                              req.stream_options)


async def _respond(state: AppState, s: OpenAIServing, raw: Request, pairs: list,
                   shape: Shape, n: int, streaming: bool, options: StreamOptions | None,
                   echo: bool = False) -> Response:
    cap, token_cap = state.settings.max_queued_requests, state.settings.max_queued_tokens
    tokens = sum(len(r.prompt_ids) + r.params.max_tokens for _, r in pairs)
    if (cap is not None and state.in_flight + len(pairs) > cap or token_cap is not None
            and state.in_flight_tokens + tokens > token_cap):
        raise APIError(503, "The request queue is full.", headers={"Retry-After": "1"})
    choices: list[Choice] = [c for c, _ in pairs]
    if state.settings.log_requests:
        for c in choices:
            log.info("request %s prompt=%r", c.rid, c.prompt_text or c.prompt_ids)
    state.in_flight += len(pairs)
    state.in_flight_tokens += tokens
    events = s.events(pairs)
    if streaming:
        return StreamingResponse(
            _counted(state, choices, tokens,
                     stream(shape, choices, events, n, options or StreamOptions(), echo)),
            media_type="text/event-stream")
    try:
        return await _complete(raw, events, shape, choices, n, echo)
    finally:
        _release(state, choices, tokens)


def _release(state: AppState, choices: list[Choice], tokens: int) -> None:
    state.in_flight -= len(choices)
    state.in_flight_tokens -= tokens
    if state.settings.log_requests:
        for c in choices:
            log.info("request %s finish=%s output=%r", c.rid, c.finish_reason, c.text)


async def _counted(state: AppState, choices: list[Choice], tokens: int,
                   body: AsyncIterator[str]) -> AsyncIterator[str]:
    try:
        async for chunk in body:
            yield chunk
    finally:
        _release(state, choices, tokens)


async def _complete(raw: Request, events: AsyncIterator[Any], shape: Shape,
                    choices: list[Choice], n: int, echo: bool) -> Response:
    task = asyncio.create_task(_drain(events))
    while not task.done():  # a client that goes away aborts its requests
        await asyncio.wait({task}, timeout=0.5)
        if not task.done() and await raw.is_disconnected():
            task.cancel()
            return Response(status_code=499)
    try:
        task.result()
    except EngineDeadError as e:
        raise APIError(500, str(e)) from None
    failed = next((c for c in choices if c.error is not None), None)
    if failed is not None:
        raise APIError(400 if failed.bad_request else 500, failed.error or "generation failed")
    return JSONResponse(full_response(shape, choices, n, echo))


async def _drain(events: AsyncIterator[Any]) -> None:
    async for _ in events:
        pass
