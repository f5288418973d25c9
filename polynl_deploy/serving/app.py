"""The FastAPI app: Open Inference Protocol v2 REST endpoints, /metrics, and the app's lifespan."""

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from polynl_deploy import __version__
from polynl_deploy.errors import InputError
from polynl_deploy.serving.metrics import UNKNOWN_MODEL, ServingMetrics
from polynl_deploy.serving.models import MODEL_VERSION, ServedModel, load_models
from polynl_deploy.serving.protocol import (EXTENSIONS, HEADER_LENGTH, ErrorResponse, InferenceRequest,
                                            ProtocolError, decode_request, decompress, encode_response, is_count)
from polynl_deploy.serving.scheduler import ModelScheduler, QueueFullError, ShuttingDownError
from polynl_deploy.serving.settings import ServeSettings

logger = logging.getLogger("polynl_deploy.serving")

SERVER_NAME = "polynl-deploy"

_ERRORS = {status: {"model": ErrorResponse, "description": text} for status, text in (
    (400, "malformed request, or inputs that do not fit the model"), (404, "unknown model or version"),
    (413, "request body too large"), (415, "unsupported Content-Encoding"),
    (503, "queue full or shutting down"), (504, "inference timed out"))}
_INFER_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"},
                                 "description": f"JSON header of {HEADER_LENGTH} bytes, then binary tensors"}}}}


class ServerState:
    """What the endpoints share: models, their schedulers, metrics, and the draining flag."""

    def __init__(self, settings: ServeSettings, models: dict[str, ServedModel]) -> None:
        self.settings = settings
        self.models = models
        self.metrics = ServingMetrics()
        self.schedulers: dict[str, ModelScheduler] = {}
        self.draining = False

    @property
    def ready(self) -> bool:
        return bool(self.schedulers) and not self.draining

    def model(self, name: str, version: str | None) -> ServedModel:
        model = self.models.get(name)
        if model is None:
            raise ProtocolError(f"unknown model {name!r}; served: {sorted(self.models)}", 404)
        if version not in (None, MODEL_VERSION):
            raise ProtocolError(f"model {name!r} has no version {version!r}; versions: [{MODEL_VERSION!r}]", 404)
        return model


def create_app(settings: ServeSettings) -> FastAPI:
    """Load the models of ``settings`` (errors surface here, before any port is bound) and build the app."""
    state = ServerState(settings, load_models(settings))

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        executor = ThreadPoolExecutor(settings.workers, thread_name_prefix="polynl-infer")
        for name, model in state.models.items():
            scheduler = ModelScheduler(model, executor, state.metrics, max_queue=settings.max_queue,
                                       max_batch_size=min(settings.max_batch_size, model.max_rows or 1 << 30),
                                       max_delay_s=settings.max_delay_ms / 1000,
                                       concurrency=settings.workers if model.thread_safe else 1)
            scheduler.start()
            state.schedulers[name] = scheduler
        try:
            yield
        finally:
            state.draining = True
            await asyncio.gather(*(s.stop(settings.drain_timeout_s) for s in state.schedulers.values()))
            executor.shutdown(wait=True)

    app = FastAPI(title="polynl-deploy inference server", version=__version__, lifespan=lifespan,
                  description="Open Inference Protocol (KServe v2) REST API with the binary tensor data extension.")
    app.state.serving = state
    _add_error_handlers(app)
    _add_routes(app, state)
    _document_api(app, state.models)
    return app


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ProtocolError)
    async def protocol_error(_request, exc: ProtocolError):
        return _error(exc.status, str(exc))

    @app.exception_handler(HTTPException)
    async def http_error(_request, exc: HTTPException):
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request, exc: RequestValidationError):
        return _error(400, f"invalid request: {exc.errors()}")

    @app.exception_handler(Exception)
    async def internal_error(_request, exc: Exception):
        logger.exception("unexpected error")
        return _error(500, f"internal error: {type(exc).__name__}")


def _add_routes(app: FastAPI, state: ServerState) -> None:
    @app.get("/v2", summary="Server metadata")
    async def server_metadata():
        return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}

    @app.get("/v2/health/live", summary="Server liveness")
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready", summary="Server readiness", responses={503: {"description": "not ready"}})
    async def ready():
        return JSONResponse({"ready": state.ready}, status_code=200 if state.ready else 503)

    async def model_metadata(request: Request, name: str, version: str | None = None):
        return state.model(name, version).metadata()

    async def model_ready(request: Request, name: str, version: str | None = None):
        state.model(name, version)
        return JSONResponse({"name": name, "ready": state.ready}, status_code=200 if state.ready else 503)

    async def infer(request: Request, name: str, version: str | None = None):
        started = time.perf_counter()
        label = name if name in state.models else UNKNOWN_MODEL
        response = await _infer(state, name, version, request)
        state.metrics.requests.labels(label, str(response.status_code)).inc()
        if response.status_code == 200:
            state.metrics.latency.labels(label).observe(time.perf_counter() - started)
        return response

    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        versioned = "{version}" in prefix
        app.add_api_route(prefix, _path_only(model_metadata, versioned), methods=["GET"],
                          summary="Model metadata", responses=_ERRORS)
        app.add_api_route(f"{prefix}/ready", _path_only(model_ready, versioned), methods=["GET"],
                          summary="Model readiness", responses=_ERRORS)
        app.add_api_route(f"{prefix}/infer", _path_only(infer, versioned), methods=["POST"], summary="Inference",
                          responses=_ERRORS, openapi_extra=_INFER_BODY)

    @app.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
    async def metrics():
        return Response(state.metrics.render(), media_type=state.metrics.content_type)


def _path_only(endpoint, versioned: bool):
    """``endpoint`` with ``version`` as a path parameter, or without it (never a query parameter)."""
    if versioned:
        async def with_version(request: Request, name: str, version: str):
            return await endpoint(request=request, name=name, version=version)
        return with_version

    async def without_version(request: Request, name: str):
        return await endpoint(request=request, name=name)
    return without_version


async def _infer(state: ServerState, name: str, version: str | None, request: Request) -> Response:
    """One inference request to its response; every failure becomes an ``{"error": ...}`` reply."""
    settings = state.settings
    try:
        model = state.model(name, version)
        if state.draining:
            raise ProtocolError("the server is shutting down", 503)
        scheduler = state.schedulers[model.name]
        with scheduler.admission():  # before the body is read: a full queue costs no memory
            body = await _read_body(request, settings.max_body_bytes)
            decoded = await run_in_threadpool(_decode_for, model, body, request.headers, settings.max_body_bytes)
            outputs = await scheduler.run(decoded.inputs, settings.request_timeout_s)
        selected = {n: outputs[n] for n in decoded.outputs} if decoded.outputs is not None else outputs
        content, headers = await run_in_threadpool(encode_response, model.name, MODEL_VERSION, decoded.id,
                                                   selected, decoded.binary_outputs)
        return Response(content, headers=headers)
    except ProtocolError as exc:
        return _error(exc.status, str(exc))
    except InputError as exc:
        return _error(400, str(exc))
    except QueueFullError as exc:
        return _error(503, str(exc), {"Retry-After": "1"})
    except ShuttingDownError as exc:
        return _error(503, str(exc))
    except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
        return _error(504, f"inference did not finish within {settings.request_timeout_s} s")
    except Exception as exc:
        logger.exception("model %s: inference failed", name)
        return _error(500, f"inference failed: {type(exc).__name__}: {exc}")


def _decode_for(model: ServedModel, body: bytes, headers, limit: int):
    decoded = decode_request(decompress(body, headers.get("content-encoding"), limit), headers.get(HEADER_LENGTH))
    model.check_inputs(decoded.inputs)
    model.check_outputs(decoded.outputs)
    return decoded


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if is_count(declared) and int(declared) > limit:
        raise ProtocolError(f"request body of {declared} bytes exceeds the limit of {limit} bytes", 413)
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ProtocolError(f"request body exceeds the limit of {limit} bytes", 413)
            chunks.append(chunk)
    except ClientDisconnect:
        raise ProtocolError("the client disconnected before sending the whole body") from None
    return b"".join(chunks)


def _document_api(app: FastAPI, models: dict[str, ServedModel]) -> None:
    """Publish the InferenceRequest schema (the endpoint reads raw bytes, so FastAPI cannot infer it)
    and the served model names and versions as the values of the path parameters."""
    enums = {"name": sorted(models), "version": [MODEL_VERSION]}

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            request_schema = InferenceRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(request_schema.pop("$defs", {}))
            components["InferenceRequest"] = request_schema
            for path in schema["paths"].values():
                for operation in path.values():
                    operation["responses"].pop("422", None)  # errors are answered 400 {"error"}, never 422
                    for parameter in operation.get("parameters", []):
                        parameter["schema"]["enum"] = enums[parameter["name"]]
            components.pop("HTTPValidationError", None)
            components.pop("ValidationError", None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
