"""textgen serve: an HTTP API (FastAPI on uvicorn) and a playground page for the trained runs.

FastAPI because it gives request validation and an OpenAPI description from one declaration per
request type, on uvicorn, a small ASGI server that stops cleanly on Ctrl-C and SIGTERM. Everything the
page needs is served by the package itself (no CDN): FastAPI's Swagger page, which loads from a CDN,
is off; the OpenAPI description is at /v1/openapi.json.

Each run is loaded once, on first use, and kept with its batcher (textgen.request_batcher): requests that
arrive while others are generating join the same compiled engine (up to 64 streams at once; more
wait their turn) as extra streams at the next chunk,
each with its own temperature, filters and seed, and leave when they are done or their client
has gone. A run that is still training is followed: when its best checkpoint changes, the next request
loads it, and the requests already running finish on the model they started with.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import errno
import json
import logging
import math
import re
import resource
import signal
import socket
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Optional

import anyio
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException

from textgen.checkpoint import DamagedCheckpoint
from textgen.config import (DEFAULT_SHUTDOWN_TIMEOUT, SAMPLE_FIELDS, SAMPLE_FLAGS, Limits,
                            SampleConfig, meant_option, sample_config_of, shown_number)
from textgen.errors import TextgenError, as_keywords, counted, shown_start
from textgen.quiet_import import import_tensorflow_quietly
from textgen.serve_schema import (GenerateRequest, GenerateResponse, Health, ModelsResponse, NextRequest,
                                  NextResponse, ScoreRequest, ScoreResponse, errors, integral_bounds, with_limits)
from textgen.served_runs import ApiError, Runs

logger = logging.getLogger("textgen")
REQUESTS = {"/v1/generate": GenerateRequest, "/v1/score": ScoreRequest, "/v1/next": NextRequest}  # their bodies
DISCONNECT_POLL_S = 0.2  # how often a non-streamed request checks that its client is still there
FINAL_WORDS_WAIT_S = 2.0  # how long requests cut by the shutdown may take to answer so (a client slow to read)
SHUTTING_DOWN = "the server is shutting down; send the request again once it is back"
NAMED_UNKNOWN = 10  # unknown fields an error names (and looks for a "did you mean" for)
MAX_OPTION_NAME = 40  # characters of an unknown field compared with the fields' names (difflib: quadratic)


def _error_event(message: str) -> str:
    """A stream's last event when it cannot end with "done": the error, as every error's JSON body says it."""
    return f"event: error\ndata: {json.dumps({'error': message})}\n\n"


SHUTDOWN_EVENT = _error_event(SHUTTING_DOWN)  # a cut stream's last


EXAMPLE_BODIES = {"/v1/score": '{"text": "The end."}', "/v1/next": '{"prime": "The "}'}  # the rest: EXAMPLE_BODY
EXAMPLE_BODY = '{"prime": "The ", "length": 100}'


def _deliverer(loop: asyncio.AbstractEventLoop, inbox: asyncio.Queue):
    """The batcher's deliver callback for a request served on loop: it puts each piece in inbox. After a second
    Ctrl-C the loop closes while the batcher's thread still runs; its pieces then go nowhere, without the traceback
    of "Event loop is closed" (raised again from its error handler, it killed the thread with a second one)."""

    def deliver(piece) -> None:
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(inbox.put_nowait, piece)

    return deliver


def _sample_config(body, limits: Limits) -> SampleConfig:
    from textgen.generate import with_seed_drawn

    fields = body.model_dump()
    if "length" not in body.model_fields_set:  # the general default (500) may be over this server's --max-length
        fields["length"] = min(fields["length"], limits.max_length)
    config = sample_config_of(fields)  # the fields besides SampleConfig's: the run, the streaming switch
    # This server's limits come before the general rules, which allow far more.
    if config.num_samples < 1:
        raise ApiError(f"num_samples must be an integer in [1, {limits.max_samples}] on this server, got "
                       f"{shown_number(config.num_samples)}")
    if config.sample_count > limits.max_samples:
        raise ApiError(f"at most {limits.max_samples} samples per request (temperatures x num_samples), got "
                       f"{shown_number(config.sample_count)}")
    if not 0 <= config.length <= limits.max_length:  # (the general rule's range, up to 1e+07, is not this server's)
        raise ApiError(f"length must be in [0, {limits.max_length}] on this server, got {shown_number(config.length)}")
    config.validate()
    _check_prime(config.prime, limits)
    return with_seed_drawn(config)  # sent back, so that a text the client likes can be asked for again


def _check_prime(prime: str, limits: Limits) -> None:
    if len(prime) > limits.max_prime_chars:
        raise ApiError(f"prime must be at most {limits.max_prime_chars} characters on this server, got {len(prime)}")


def _check_next(body: NextRequest, limits: Limits) -> None:
    """Refuse a /v1/next request's bad values before its run is loaded, in generate's words: the prime's unknown
    characters, which need the run's vocabulary, are refused where the distribution is computed."""
    SampleConfig(prime=body.prime, temperature=(body.temperature,), skip_unknown=body.skip_unknown).validate()
    _check_prime(body.prime, limits)
    if body.top is not None and body.top < 1:
        raise ApiError(f"top must be an integer in [1, inf), got {shown_number(body.top)}")


BODY_UNREADABLE = "There was an error parsing the body"  # FastAPI's HTTPException detail


def _example(request) -> str:
    return f"send for instance {EXAMPLE_BODIES.get(request.url.path, EXAMPLE_BODY)}"


def _page_headers(page: str) -> dict:
    """What a browser may do with the playground: run its own script and style (by their hashes) and call this
    server, nothing else (no other script, frame or form target: what an injected text or another site framing
    the page would need); the page inserts text only as text, so this is a second guard, not the first."""
    import base64
    import hashlib
    import re

    def hashes(tag: str) -> str:
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()}'"
                        for body in re.findall(rf"<{tag}>(.*?)</{tag}>", page, re.S))

    policy = (f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; connect-src 'self'; "
              "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return {"Content-Security-Policy": policy, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
            "X-Frame-Options": "DENY"}


def create_app(checkpoint_dir: Path, run: Optional[str] = None, limits: Limits = Limits(),
               allow_origins: tuple = (), listening_on: Optional[str] = None, loopback: bool = True,
               allow_hosts: tuple = ()):
    """The ASGI application serving the runs under checkpoint_dir (run: the default one); allow_origins: the web
    origins whose pages may call the API (CORS; "*": any); listening_on: the --host it listens on, if any, on the
    loopback interface alone or (not loopback: --host 0.0.0.0) beyond it, whose requests must name this machine or one
    of allow_hosts (_KnownHosts)."""

    from textgen.generate import ENGINE_SIZES, collect_warnings

    runs = Runs(checkpoint_dir, run, tuple(sorted(set(ENGINE_SIZES) | {max(ENGINE_SIZES[-1], limits.max_samples)})),
                limits.max_loaded_runs)
    page = resources.files("textgen").joinpath("playground.html").read_text(encoding="utf-8")
    page_headers = _page_headers(page)

    # No redirect from /v1/generate/ to /v1/generate: a POST got a 307 with an empty body (curl printed nothing)
    app = FastAPI(title="textgen", version="1", docs_url=None, redoc_url=None, openapi_url="/v1/openapi.json",
                  redirect_slashes=False)
    app.state.runs = runs
    describe = app.openapi
    # (FastAPI keeps the document it made, then ours: made once)
    app.openapi = lambda: with_limits(integral_bounds(describe()), limits)

    def error(status: int, message: str, headers: Optional[dict] = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(_ClientGone)
    async def client_gone(request, exc):  # nobody reads it: nginx's "client closed request"
        return Response(status_code=499)

    @app.exception_handler(ApiError)
    async def api_error(request, exc: ApiError):
        return error(exc.status, str(exc))

    @app.exception_handler(DamagedCheckpoint)
    async def damaged(request, exc: DamagedCheckpoint):  # the run on the server, not the request
        return error(500, runs.inside(exc))

    @app.exception_handler(TextgenError)
    async def refused(request, exc: TextgenError):  # bad options (named as the JSON fields), an unknown prime character
        return error(400, str(as_keywords(exc, SAMPLE_FIELDS, SAMPLE_FLAGS, json=True)))

    @app.exception_handler(Exception)
    async def failed(request, exc: Exception):  # a bug or the machine: JSON as every error (the log has the traceback)
        return error(500, f"the server failed on this request ({type(exc).__name__}); its log says more")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc: StarletteHTTPException):
        if exc.detail == BODY_UNREADABLE:  # FastAPI's words for a body json.loads fails on but not as bad JSON
            try:
                body = await request.body()
            except Exception:  # a client that left midway (FastAPI's words for that too): no reason to give
                body = None
            return error(422, f"the body is not JSON ({_why_unreadable(body)}); {_example(request)}")
        if exc.status_code == 404 and exc.detail == "Not Found":  # Starlette's words for a path it does not have
            return error(404, f"no such path {request.url.path}; GET /v1/openapi.json lists the API's paths")
        if exc.status_code == 405 and "Allow" in (exc.headers or {}):  # Starlette's words: "Method Not Allowed"
            origin = request.headers.get("origin")
            if request.method == "OPTIONS" and origin and "access-control-request-method" in request.headers:
                return error(405, f"a page from {origin} asks to call {request.url.path} (a browser's CORS "
                                  f"preflight); start the server with {_allow_origin(origin)} to let it", exc.headers)
            allowed = exc.headers["Allow"]
            example = f"; {_example(request)}" if allowed == "POST" else ""
            return error(405, f"{request.url.path} takes {allowed}, not {request.method}{example}", exc.headers)
        return error(exc.status_code, str(exc.detail), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc: RequestValidationError):
        # The deepest error: in a union ([0.5, "hot"] as a temperature), the branch that got furthest; a field the
        # endpoint does not take first ({"txt": ...} is also told that text is missing: the typo is the news)
        first = max(exc.errors(), key=lambda each: (each.get("type") == "extra_forbidden", len(each.get("loc", ()))),
                    default={})
        example = _example(request)
        if first.get("type") == "json_invalid":
            return error(422, f"the body is not valid JSON ({first.get('ctx', {}).get('error', 'cannot be read')} "
                              f"at character {first['loc'][-1]}); {example}")
        # Without pydantic's names of a union's branches: "temperature", not "temperature.float"
        loc = [part for part in first.get("loc", ()) if part != "body"]
        where = ".".join(str(part) for part in loc[:1] + [part for part in loc[1:] if not (
            isinstance(part, str) and (part in ("float", "int", "str", "bool") or "[" in part))])
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if not where and not (media == "application/json" or media.startswith("application/") and
                              media.endswith("+json")):  # what FastAPI reads as JSON
            # curl -d without -H sends a form: its JSON never reaches the model
            return error(415, "send the body as JSON, with the header Content-Type: application/json (curl: -H "
                              f"'Content-Type: application/json'); {example}")
        if not where:  # the body as a whole: a list, a string, nothing
            return error(422, f"the body must be a JSON object; {example}")
        if first.get("type") == "extra_forbidden" and len(loc) == 1 and request.url.path in REQUESTS:
            # (pydantic says "Extra inputs are not permitted", naming no field the endpoint takes)
            fields = list(REQUESTS[request.url.path].model_fields)
            unknown = [str(each["loc"][-1]) for each in exc.errors() if each.get("type") == "extra_forbidden"]
            named = unknown[:NAMED_UNKNOWN]  # a body of 20,000 names held the event loop 0.8 s and was echoed whole
            meant = [repr(known) + (f" for {name!r}" if len(unknown) > 1 else "") for name in named
                     if (known := meant_option(name[:MAX_OPTION_NAME], fields))]
            more = f" and {len(unknown) - len(named):,} more" if len(unknown) > len(named) else ""
            return error(422, f"{request.url.path} takes no field{'s' if len(unknown) > 1 else ''} "
                              f"{', '.join(shown_start(name) for name in named)}{more}"
                              + (f"; did you mean {', '.join(meant)}?" if meant else "")
                              + f" (its fields: {', '.join(fields)})")
        return error(422, f"{where}: {first.get('msg', 'invalid request')}")

    app.add_middleware(_BodyLimit, limits=limits)
    if listening_on is not None:
        app.add_middleware(_KnownHosts, listening_on=listening_on, loopback=loopback, allowed=allow_hosts)
    app.add_middleware(_AnsweredWhenCut)
    if allow_origins:  # around the whole stack, the 500 handler's ServerErrorMiddleware too (add_middleware puts
        # it inside): every answer, a 413 or a failure nobody foresaw as well, carries the headers a browser needs
        build = app.build_middleware_stack
        app.build_middleware_stack = lambda: _Cors(
            build(), allow_origins=list(allow_origins), allow_methods=["GET", "POST"], allow_headers=["Content-Type"])

    # async: answered on the event loop, not by a worker thread that requests waiting for a run may all hold
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def playground():
        return HTMLResponse(page, headers=page_headers)

    @app.get("/healthz", responses={200: {"model": Health}})
    async def healthz():
        return {"status": "ok"}

    @app.get("/v1/models", responses={200: {"model": ModelsResponse}})
    def models():
        paths = runs.paths()
        # A default run deleted since start-up is not named: a client would select a run the list does not hold.
        return {"default": runs.default if runs.default in paths else None,
                "models": runs.describe_all(paths),
                "limits": dict(max_length=limits.max_length, max_samples=limits.max_samples,
                               max_prime_chars=limits.max_prime_chars, max_score_chars=limits.max_score_chars)}

    for path, answer, kind in (("/", playground, HTMLResponse), ("/healthz", healthz, JSONResponse),
                               ("/v1/models", models, JSONResponse)):  # what uptime checks and link checkers send
        app.add_api_route(path, answer, methods=["HEAD"], response_class=kind, include_in_schema=False)

    loading: dict[str, asyncio.Lock] = {}  # by the name asked for: one request loads a run, the others wait here

    async def loaded(name: Optional[str]) -> None:
        """Load the run asked for if it is not yet (in a worker thread); the other requests for it wait on the event
        loop meanwhile. Each waited in a thread of its own: a burst of them held every thread, and the whole server
        waited for the load."""
        if runs.holds(name):
            return
        lock = loading.setdefault(name or "", asyncio.Lock())
        try:
            async with lock:
                await run_in_threadpool(runs.get, name)
        finally:
            if not lock.locked():  # no request is loading it: names asked for once (a typo, a 404) are not kept
                loading.pop(name or "", None)

    @app.post("/v1/generate", responses={
        **errors("an option out of range, or a prime with characters the model never saw"),
        200: {"model": GenerateResponse,
              "description": "the samples and the options used, the seed named (JSON); or with stream: Server-Sent "
                             'Events: {"text": prime, "prime": true}, then {"text": piece, "sample": i} pieces, then '
                             'event "done" ({"stopped", "samples": [{"temperature", "index", "stopped"}], "seed", '
                             '"warnings"}), or '
                             'event "error" ({"error": message}) if generation failed or the server is shutting down',
              "content": {"text/event-stream": {}}}})
    async def generate(body: GenerateRequest, request: Request):
        config = _sample_config(body, limits)  # before the run is loaded: a bad request costs nothing
        loop, inbox = asyncio.get_running_loop(), asyncio.Queue()
        await loaded(body.run)
        served, job = await run_in_threadpool(  # in a thread: a new checkpoint of the run is loaded there
            runs.submit, body.run, config, _deliverer(loop, inbox))
        if body.stream:
            return _ClosingStream(_events(job, inbox), media_type="text/event-stream",
                                  headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # nginx
        watcher = asyncio.create_task(_cancel_when_gone(request, job))
        try:
            while await inbox.get() is not None:
                pass
        finally:
            watcher.cancel()
            job.cancel()  # nothing once the job is over; stops it if this request is itself cancelled (shutdown)
        if job.error is not None:
            raise ApiError(f"generation failed ({type(job.error).__name__}); try again", status=500)
        options = dict(body.model_dump(exclude={"stream"}), run=served.name, seed=config.seed, length=config.length)
        return {"options": options, "samples": [dataclasses.asdict(sample) for sample in job.streams.samples()],
                "warnings": _warnings_at_the_end(job)}

    engine_turns: dict[str, asyncio.Lock] = {}

    @contextlib.asynccontextmanager
    async def engine_turn(name: Optional[str], request: Request):
        """The served run, loaded, for one score or /v1/next at a time per run: they share the generator's
        one-stream engine and its lock (Generator._scoring), and the others wait here, not in a worker thread each.
        A request whose client left while it waited is not computed (16 abandoned scores of 20,000 characters held
        the next request 7 s), and says so in the log, which had no line for it."""
        await loaded(name)
        served = await run_in_threadpool(runs.get, name)
        async with engine_turns.setdefault(served.name, asyncio.Lock()):
            if await request.is_disconnected():
                _log_gone(request, "went away while it waited for the engine; not computed")
                raise _ClientGone()
            yield served

    @app.post("/v1/score", responses={**errors("a text over the server's max_score_chars, or with fewer than 2 "
                                               "characters the model knows"), 200: {"model": ScoreResponse}})
    async def score(body: ScoreRequest, request: Request):
        if len(body.text) > limits.max_score_chars:
            raise ApiError(f"text must be at most {limits.max_score_chars} characters on this server, got "
                           f"{len(body.text)}")
        async with engine_turn(body.run, request) as served:
            return dict(run=served.name, **await run_in_threadpool(served.generator.score, body.text))

    @app.post("/v1/next", responses={**errors("a temperature out of range, top below 1, a prime over the server's "
                                              "max_prime_chars or with characters the model never saw"),
                                      200: {"model": NextResponse}})
    async def next_char(body: NextRequest, request: Request):
        _check_next(body, limits)  # before the run is loaded: a bad request costs nothing
        warnings = []  # dropped prime characters: told in the answer, not logged (each request is one log line)
        async with engine_turn(body.run, request) as served:
            probabilities = await run_in_threadpool(served.generator.next_char_probabilities, body.prime,
                                                    body.temperature, body.skip_unknown, collect_warnings(warnings))
        listed = [dict(character=ch, probability=p) for ch, p in probabilities.items()][:body.top]
        return dict(run=served.name, temperature=body.temperature, probabilities=listed, warnings=warnings)

    return app


class _ClientGone(Exception):
    """A request's client closed its connection before the request was computed."""


class _AnsweredWhenCut:
    """A request cut by the shutdown (its grace period over) before its answer started gets the 503 in JSON that
    every error is, not uvicorn's plain-text 500: one loading its run, waiting for the engine, generating unstreamed."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def sending(message):
            nonlocal started
            started = True
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except asyncio.CancelledError:
            if not started:
                with _last_words():
                    await JSONResponse({"error": SHUTTING_DOWN}, status_code=503)(scope, receive, send)
            raise


@contextlib.contextmanager
def _last_words():
    """Where a request being cancelled (the shutdown's grace period over) still sends its answer's end. Shielded:
    Starlette sends a stream from a task group whose cancelled scope would cancel these sends too whenever they wait
    for a full connection to drain; bounded: a client that stopped reading would keep them waiting."""
    with anyio.move_on_after(FINAL_WORDS_WAIT_S, shield=True), contextlib.suppress(Exception):
        yield


def _why_unreadable(body: Optional[bytes]) -> str:
    """Why json.loads refuses body (None: a body that never came whole) with something other than a JSON syntax error
    (which pydantic words itself)."""
    try:
        if body is not None:
            json.loads(body)
    except UnicodeDecodeError:
        return "not UTF-8"
    except RecursionError:
        return "nested too deeply"
    except ValueError as error:  # Python's cap on the digits of an int it converts (4,300): a body of a huge number
        if (found := re.search(r"value has (\d+) digits", str(error))) and hasattr(sys, "get_int_max_str_digits"):
            most = sys.get_int_max_str_digits()
            return f"it holds a number of {int(found.group(1)):,} digits, where at most {most:,} are read"
    except Exception:  # (what FastAPI refused stays refused, in the words said before)
        pass
    return "not UTF-8, or nested too deeply"


class _KnownHosts:
    """Refuse a request whose Host header names another site: a web page whose site's name its owner points at this
    server's address (DNS rebinding: 127.0.0.1 for anyone who runs the server on their own machine, or a classroom
    server's address on its network) could otherwise call the API from the browser of anyone who opens that page, no
    --allow-origin needed. On the loopback interface the names of this machine are answered (localhost, a loopback
    address, --host); listening beyond it (--host 0.0.0.0), also any IP address and the machine's own host name (how
    others reach it); and --allow-host's names."""

    def __init__(self, app, listening_on: str, loopback: bool, allowed: tuple = ()):
        self.app, self.listening_on, self.loopback = app, listening_on.strip("[]").lower(), loopback
        allowed = [_host_name(name) for name in allowed]  # --allow-host: names, .domains (or *.domains), or *
        self.any_name = "*" in allowed
        self.domains = tuple(name.lstrip("*") for name in allowed if name.startswith((".", "*.")))
        self.names = {"localhost", self.listening_on, *allowed, *(domain[1:] for domain in self.domains)}
        if not loopback:
            machine = socket.gethostname().lower()
            short = machine.split(".")[0]  # (gpu-box.lab.example.org is gpu-box to its neighbours; .local: mDNS)
            self.machine_names = list(dict.fromkeys([machine, short, f"{short}.local"]))
            self.names.update(self.machine_names)

    def _known(self, named: str) -> bool:
        if self.any_name or named in self.names or named.endswith((".localhost", *self.domains)):
            return True
        address = _ip_address(named)
        return address is not None and (address.is_loopback or not self.loopback)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            named = _host_name(Headers(scope=scope).get("host", ""))
            if named and not self._known(named):
                option = f"--allow-host {named if len(named) <= 40 else 'NAME'}"
                if self.loopback:
                    message = (f"this server listens on the loopback interface and answers requests for this machine "
                               f"(localhost, {self.listening_on}), not for {shown_start(named)}; behind a proxy that "
                               f"passes that name on, start it with {option}")
                else:
                    message = (f"this server answers requests that name this machine (an IP address, localhost, "
                               f"{', '.join(self.machine_names)}), not {shown_start(named)}, since a web page of "
                               f"another site could otherwise call it from its visitors' browsers; to reach it by "
                               f"that name, start it with {option} (or --allow-host '*' for any name)")
                return await JSONResponse({"error": message}, status_code=400)(scope, receive, send)
        await self.app(scope, receive, send)


def _host_name(header: str) -> str:
    """The name or address of a Host header, without its port: "localhost:8000" -> "localhost", "[::1]:80" ->
    "::1"."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return (header.rsplit(":", 1)[0] if header.count(":") == 1 else header).rstrip(".")


def _ip_address(name: str):
    """name as an IP address, or None when it is a host name."""
    import ipaddress

    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def _is_loopback_address(name: str) -> bool:
    return (address := _ip_address(name)) is not None and address.is_loopback


class _BodyLimit:
    """Refuse a request body over the limits' max_body_bytes: at once when its Content-Length says so, else (a
    chunked body) as soon as that much has arrived. Plain ASGI: Starlette's BaseHTTPMiddleware would hide a client's
    disconnection from the endpoint and pass every streamed piece through a task of its own."""

    def __init__(self, app, limits: Limits):
        self.app, self.max_bytes = app, limits.max_body_bytes
        # what to do, in the terms a client knows: the bytes alone did not say which field was too long
        self.message = (f"request body larger than {self.max_bytes:,} bytes; a prime may hold "
                        f"{limits.max_prime_chars:,} characters and a text to score {limits.max_score_chars:,} "
                        "(limits in GET /v1/models)")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = self.message
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await JSONResponse({"error": message}, status_code=413)(scope, receive, send)
        received, whole, deadline = 0, False, time.monotonic() + BODY_TIMEOUT_S

        async def counted():
            nonlocal received, whole
            if whole:  # then only the client's leaving is waited for, as long as a stream lasts
                return await receive()
            try:
                with anyio.fail_after(max(0.0, deadline - time.monotonic())):
                    event = await receive()
            except TimeoutError:  # a client that sends its body slowly held its memory for as long as it liked
                raise StarletteHTTPException(408, f"the request body did not arrive within {BODY_TIMEOUT_S:g} s of "
                                                  "its head; send the whole request at once") from None
            whole = event["type"] != "http.request" or not event.get("more_body", False)
            received += len(event.get("body", b""))
            if received > self.max_bytes:
                raise StarletteHTTPException(413, message)  # the endpoint's body reading turns it into the answer
            return event

        await self.app(scope, counted, send)


class _ClosingStream(StreamingResponse):
    """A stream whose generator is closed as soon as the response ends, however it ends (a client that
    went away makes the next write fail), instead of whenever the generator happens to be collected."""

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()

    async def stream_response(self, send) -> None:
        """Starlette's, ended by the error event when the shutdown cuts the stream (its grace period over; or the
        client left, and reads nothing more), so that a client does not take a cut text for a whole one."""
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        whole = False
        try:
            async for chunk in self.body_iterator:
                if not isinstance(chunk, (bytes, memoryview)):
                    chunk = chunk.encode(self.charset)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            whole = True  # its last event sent ("done", or the generation's "error")
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            with _last_words():
                if not whole:
                    await send({"type": "http.response.body", "body": SHUTDOWN_EVENT.encode(), "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            raise


async def _cancel_when_gone(request: Request, job) -> None:
    """Cancel a non-streamed job whose client has gone (nothing is written to it until the end, so only asking
    the server whether the connection closed finds out): its streams leave the batch at the next chunk."""
    try:
        while not await request.is_disconnected():
            await asyncio.sleep(DISCONNECT_POLL_S)
    except Exception as error:  # cannot tell whether the client is there: let the job finish
        logger.warning(f"cannot watch a request's connection ({error}); it runs to its end")
        return
    job.cancel()
    _log_gone(request, f"went away after {job.streams.produced} of {job.streams.config.length} characters; its "
                       "generation stopped")


def _log_gone(request: Request, what: str) -> None:
    """The log line of a request whose client left: uvicorn logs a request when its response starts, which this one
    never gets."""
    client = f"{request.client.host}:{request.client.port}" if request.client else "a client"
    logger.info(f'{client} - "{request.method} {request.url.path}" {what}')


async def _events(job, inbox):
    """Server-Sent Events: first {"text": prime, "prime": true} (the prime as the model reads it: in its Unicode
    form, unknown characters dropped; every sample starts with it), then {"text": piece, "sample": i} per decided
    piece of each sample (i: its place in the non-streamed response's samples), then event "done" with each
    sample's temperature, index and whether stop ended it, and the seed (the request's, or the one drawn for it;
    null for several temperatures without one). When the response ends early (the client went away), the job is
    cancelled and its streams leave the batch at the next chunk."""
    try:
        while (piece := await inbox.get()) is not None:  # a cancellation here: _ClosingStream ends the stream
            event = {"text": piece.text, "prime": True} if piece.sample is None else \
                {"text": piece.text, "sample": piece.sample}
            yield f"data: {json.dumps(event, ensure_ascii=False)}\n\n"
        if job.error is not None:
            yield _error_event("generation failed; try again")
        else:
            samples = [dict(temperature=sample.temperature, index=sample.index, stopped=sample.stopped)
                       for sample in job.streams.samples()]
            # "stopped": the first sample's, as before
            done = {"stopped": samples[0]["stopped"], "samples": samples, "seed": job.streams.config.seed,
                    "warnings": _warnings_at_the_end(job)}
            yield f"event: done\ndata: {json.dumps(done)}\n\n"
    finally:
        job.cancel()


def _warnings_at_the_end(job) -> list[str]:
    """A finished request's warnings: those told when it came, then the runs the repeat guard ended, in the JSON
    fields' words ("max_repeat": 0 where the command says --max-repeat 0)."""
    return job.warnings + [str(as_keywords(TextgenError(message), SAMPLE_FIELDS, SAMPLE_FLAGS, json=True))
                           for message in job.streams.repeats_ended()]


def serve(checkpoint_dir: Path, run: Optional[str], host: str, port: int, limits: Limits = Limits(),
          shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT, allow_origins: tuple = (), allow_hosts: tuple = (),
          log_level: str = "info") -> None:
    """Run the server until Ctrl-C or SIGTERM, which lets the requests in flight end for at most shutdown_timeout
    seconds (a service manager's stop must not wait on a long stream: --max-length 200000 took a minute). Its log
    lines (uvicorn's and textgen's) carry their time and level, from log_level (SERVER_LOG_LEVELS) up."""
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host  # an IPv6 address, as URLs write it
    # Listening before anything loads: a taken port is refused in one line, and of two servers started together on
    # one port the second is (a probe closed again let both load, then uvicorn failed to bind one: exit code 3).
    # Clients that connect while the runs load wait in the backlog.
    with _listening(host, port, shown) as listening, _log_lines_timed(log_level):
        _raise_open_file_limit()
        import_tensorflow_quietly()
        loopback = all(_is_loopback_address(sock.getsockname()[0]) for sock in listening)
        app = create_app(checkpoint_dir, run, limits, allow_origins, listening_on=host, loopback=loopback,
                         allow_hosts=allow_hosts)
        logger.info(f"serving the runs in {checkpoint_dir} (default {app.state.runs.default!r}) on "
                    f"http://{shown}:{port}/ (API under /v1, OpenAPI description at /v1/openapi.json; Ctrl-C stops)")
        log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
        log_config["handlers"]["access"]["stream"] = "ext://sys.stderr"  # stdout is never for diagnostics
        for formatter in log_config["formatters"].values():
            formatter.update(fmt=TIMED + formatter["fmt"], datefmt=LOG_TIME)
        log_config.setdefault("filters", {})["cut_short"] = {"()": _CutShort, "shutdown_timeout": shutdown_timeout}
        log_config["handlers"]["default"]["filters"] = ["cut_short"]
        logging.getLogger("asyncio").addFilter(_CutShort())
        server = _Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=True,
                                        log_config=log_config, timeout_graceful_shutdown=shutdown_timeout,
                                        http=_H11WithHeadTimeout, backlog=BACKLOG))
        try:
            server.run(sockets=listening)
        except KeyboardInterrupt:  # uvicorn raises the Ctrl-C it caught again once it stopped: stopping was the ask
            pass
        finally:
            app.state.runs.stop()  # after a second Ctrl-C the batchers still generate for requests that were cut


BACKLOG = 2048  # uvicorn's default: connections waiting to be accepted, such as those made while the runs load
ACCEPT_FAILURE_EVERY_S = 60.0  # the least time between two log lines on connections not accepted
HEAD_TIMEOUT_S = 20.0  # a connection that has not sent a whole request head by then is closed
BODY_TIMEOUT_S = 60.0  # a request whose body has not all arrived this long after its head gets a 408
OPEN_FILES_WITHOUT_HARD_LIMIT = 1 << 20  # Linux's default most (fs.nr_open), where the hard limit is "unlimited"


@contextlib.contextmanager
def _listening(host: str, port: int, shown: str):
    """Sockets listening on every address of host (localhost: 127.0.0.1 and often ::1), closed however the server
    ends (a run that could not load kept the port while its error lived); a host or port that cannot be listened on
    is refused in one line."""
    advice = "check --host (an address of this machine) and --port (1024 or above without root)"
    listening = []
    try:
        try:
            addresses = {(family, address) for family, _, _, _, address in
                         socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)}
            for family, address in addresses:
                listening.append(_listening_socket(family, address))
        except (OSError, UnicodeError) as error:  # (socket.gaierror is an OSError)
            if getattr(error, "errno", None) == errno.EADDRINUSE:
                advice = "choose another --port or stop the program that uses it"
            raise TextgenError(f"cannot listen on {shown}:{port} ({getattr(error, 'strerror', None) or error}); "
                               f"{advice}") from None
        yield listening
    finally:
        for sock in listening:
            sock.close()


def _listening_socket(family: int, address: tuple) -> socket.socket:
    """A socket listening on address, bound as asyncio binds a server's (SO_REUSEADDR; "::" not also 0.0.0.0)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(BACKLOG)  # (two sockets with SO_REUSEADDR may both bind a port until one listens)
    except OSError:
        sock.close()
        raise
    return sock


def _raise_open_file_limit() -> None:
    """The soft limit on open files raised to the hard one: each connection holds a descriptor, and at systemd's
    default soft limit (1,024) a few hundred idle clients left the server unable to accept any other."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = OPEN_FILES_WITHOUT_HARD_LIMIT if hard == resource.RLIM_INFINITY else hard  # (infinity is refused)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


class _H11WithHeadTimeout(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, which closes a connection that has not sent a whole request head within
    HEAD_TIMEOUT_S of connecting or of its last response. uvicorn times a connection out only while it is idle
    between requests (and not once a byte of the next one came), so a client that connected and sent nothing, or
    half a head, held its descriptor for good: enough of them and the server could accept no other. (h11, which
    textgen installs, even where httptools is installed too: its protocol is the one this times.)"""

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.head_deadline = self.loop.call_later(HEAD_TIMEOUT_S, self._close_without_request)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self.head_deadline.cancel()
        self.head_deadline = self.loop.call_later(HEAD_TIMEOUT_S, self._close_without_request)

    def _close_without_request(self) -> None:
        # (cycle: the latest request's, set once its head came; a response still going out is not waiting)
        waiting = self.cycle is None or self.cycle.response_complete
        if waiting and not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc) -> None:
        self.head_deadline.cancel()
        super().connection_lost(exc)


class _Server(uvicorn.Server):
    """uvicorn's server, whose shutdown also waits (at most FINAL_WORDS_WAIT_S) for the connections of the requests
    it cut to close. After a SIGTERM uvicorn raises the signal again as soon as its shutdown returns, which ends the
    process at once: a stream cut at the end of the grace period lost its last event, not yet sent (its cancellation
    still on its way out of Starlette's task group) or still in the buffer of a connection slow to read."""

    def handle_exit(self, sig: int, frame) -> None:
        if self.should_exit and not self.force_exit:  # uvicorn stops at once on a second SIGINT alone: a second
            # SIGTERM (docker stop, systemctl stop sent twice) waited out --shutdown-timeout
            self.force_exit = True
            logger.info(f"stopping at once (a second {'Ctrl-C' if sig == signal.SIGINT else signal.Signals(sig).name}"
                        "): cutting short the requests still running")
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets=None) -> None:
        await super().shutdown(sockets)
        deadline = time.monotonic() + FINAL_WORDS_WAIT_S
        while self.server_state.connections and not self.force_exit and time.monotonic() < deadline:
            await asyncio.sleep(0.02)


# Each log line with its time: uvicorn's, and textgen's in uvicorn's form (textgen's had no level either)
TIMED, LOG_TIME = "%(asctime)s ", "%Y-%m-%d %H:%M:%S"


class _LevelOnce(uvicorn.logging.DefaultFormatter):
    """uvicorn's format, without the "warning: " that some of textgen's messages carry for the command line, where
    nothing else shows their level ("WARNING:  warning: ...")."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        own_prefix = record.levelname.lower() + ": "
        if record.message.startswith(own_prefix):
            record = copy.copy(record)  # the other handlers format the record as it came
            record.message = record.message[len(own_prefix):]
        return super().formatMessage(record)


@contextlib.contextmanager
def _log_lines_timed(log_level: str):
    """textgen's log handlers (the command's stderr) in the server's format and level, while it runs."""
    handlers = [(handler, handler.formatter) for handler in logger.handlers]
    level = logger.level
    form = TIMED + uvicorn.config.LOGGING_CONFIG["formatters"]["default"]["fmt"]
    for handler, _ in handlers:
        handler.setFormatter(_LevelOnce(form, LOG_TIME, use_colors=False))
    logger.setLevel(log_level.upper())
    try:
        yield
    finally:
        for handler, formatter in handlers:
            handler.setFormatter(formatter)
        logger.setLevel(level)


def _allow_origin(origin: str) -> str:
    """The option that lets a page of origin call the server: a page opened from a file sends the origin null,
    which --allow-origin refuses as no origin (scheme://host)."""
    return "--allow-origin '*'" if origin == "null" else f"--allow-origin {origin}"


class _Cors(CORSMiddleware):
    """Starlette's CORS, whose refused preflight says in JSON, as every error, what to change (it answered the plain
    text "Disallowed CORS origin")."""

    def preflight_response(self, request_headers: Headers):
        response = super().preflight_response(request_headers)
        if response.status_code != 400:
            return response
        failures = response.body.decode().removeprefix("Disallowed CORS ").split(", ")  # Starlette's words
        origin, method = request_headers["origin"], request_headers["access-control-request-method"]
        asked = [header.strip() for header in request_headers.get("access-control-request-headers", "").split(",")]
        said = {
            "origin": f"this server lets pages from {', '.join(self.allow_origins)} call it, not {origin}; start it "
                      f"with {_allow_origin(origin)} as well",
            "method": f"a page may call it with {' or '.join(sorted(self.allow_methods))}, not {method}",
            "headers": f"a page may send the headers {', '.join(sorted(self.allow_headers))}, not "
                       f"{', '.join(header for header in asked if header.lower() not in self.allow_headers)}",
            "private-network": "a page on a public address may not call a server on a private one (Chrome's Private "
                               "Network Access), which textgen serve does not allow"}
        message = "; ".join(said.get(failure, failure) for failure in failures)
        headers = {key: value for key, value in response.headers.items() if key.lower() != "content-length"}
        headers.pop("content-type", None)
        return JSONResponse({"error": message}, status_code=400, headers=headers)


class _CutShort(logging.Filter):
    """Drops uvicorn's tracebacks of the requests that a shutdown cancels (a second Ctrl-C, or the grace period
    over): one line says they were cut short, instead of some 70 lines of CancelledError. And asyncio's
    "socket.send() raised exception.", which names no request: pieces written to a streaming client that went away
    before the server noticed (its generation stops at the next chunk). uvicorn's lines on the grace period say how
    long it lasts, and its end, the shutdown asked for, is a warning, not an ERROR. And asyncio's traceback per
    connection it could not accept (out of descriptors), said in one line a minute instead."""

    def __init__(self, shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT):
        super().__init__()
        self.shutdown_timeout = shutdown_timeout
        self.waiting_told = False
        self.accept_failure_told = -math.inf
        self.clock = time.monotonic

    def filter(self, record: logging.LogRecord) -> bool:
        cancelled = record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError)
        if record.msg in ("Waiting for connections to close. (CTRL+C to force quit)",
                          "Waiting for background tasks to complete. (CTRL+C to force quit)"):
            if self.waiting_told:  # uvicorn waits for the connections, then for the tasks: one line says both
                return False
            self.waiting_told = True
            record.msg = f"waiting up to {self.shutdown_timeout:g} s (--shutdown-timeout) for the requests in " \
                         f"flight to end; a second Ctrl-C or SIGTERM cuts them short"
        elif record.msg == "Cancel %s running task(s), timeout graceful shutdown exceeded" and record.args:
            record.msg = "cut short %s still running after %s s (--shutdown-timeout)"
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.args = (counted(record.args[0], "request"), f"{self.shutdown_timeout:g}")
            if not logging.getLogger(record.name).isEnabledFor(logging.WARNING):  # --log-level error
                return False
        elif str(record.msg).startswith("socket.accept() out of system resource"):  # (its socket on a next line)
            return self._accept_failed(record)
        message = record.getMessage()
        return not (cancelled or "asyncio.exceptions.CancelledError" in message
                    or message == "socket.send() raised exception.")

    def _accept_failed(self, record: logging.LogRecord) -> bool:
        """asyncio logs a traceback for every connection it fails to accept, up to the backlog's (2,048) at each
        try: out of descriptors, 2 MB of log a second. One line a minute says it instead, in the server's form."""
        now = self.clock()
        if now >= self.accept_failure_told + ACCEPT_FAILURE_EVERY_S:
            self.accept_failure_told = now
            error = record.exc_info[1] if record.exc_info else None
            why = getattr(error, "strerror", None) or "out of a system resource"
            if getattr(error, "errno", None) in (errno.EMFILE, errno.ENFILE):
                limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
                logger.error(f"cannot accept new connections ({why}; this process may open {limit:,} files): the "
                             "connections open now hold them; raise the limit (ulimit -n, or LimitNOFILE= in a "
                             "systemd unit), or find the clients that keep them open")
            else:  # (ENOBUFS, ENOMEM: the machine's memory)
                logger.error(f"cannot accept new connections ({why}); free memory on this machine")
        return False
