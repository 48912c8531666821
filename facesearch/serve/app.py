"""The HTTP API and web page (FastAPI on Starlette; ``facesearch serve`` runs it with uvicorn).

FastAPI because the API's shapes and limits are declared once and give the validation, the error
answers and the OpenAPI schema (``/openapi.json``, committed as ``docs/openapi.json``) together; it
runs on Starlette, whose thread pool takes the blocking work (decoding, FAISS, SQL) off the event
loop. The routes hold no logic: each calls the gallery handle (:class:`~facesearch.serve.service.Service`).

Every ``/v1`` request needs a key (``Authorization: Bearer fsk_...`` or ``X-API-Key``) of a scope that
allows it (read < write < admin), unless the service runs ``--no-auth`` on a loopback address. Errors are
``{"error": "...", "status": N}``, never a traceback.
"""


import asyncio
import contextlib
import logging
import time
from importlib import resources
from typing import Annotated, Literal

from fastapi import Body, Depends, FastAPI, File, Form, Path, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from facesearch import __version__, distance
from facesearch.errors import FaceSearchError, InvalidIdentityError, InvalidImageError, UnknownIdentityError
from facesearch.gallery.results import VerifyResult
from facesearch.names import validate_identity
from facesearch.serve.limits import BodyLimit
from facesearch.serve.service import ServeConfig, Service, upload_source
from facesearch.store import keys as _keys
from facesearch.store.keys import KeyInfo

log = logging.getLogger("facesearch.serve")

#: the web page's files: served by name from this table only (no client-given path reaches the disk)
STATIC = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=()",
    "content-security-policy": ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
                                "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; "
                                "base-uri 'none'; form-action 'self'; object-src 'none'"),
}
#: declared upload types accepted before decoding (the bytes are checked by decoding them)
UPLOAD_TYPES = ("image/", "application/octet-stream")

bearer = HTTPBearer(auto_error=False, description="A key from `facesearch keys create`.")
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="The same key, in this header.")


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        self.status, self.message, self.headers = status, message, headers or {}


def _status(e: FaceSearchError) -> int:
    """404 for an unknown identity, 422 for an invalid image or name, else 400 (a threshold rule the model
    lacks, a name taken, ...)."""
    if isinstance(e, UnknownIdentityError):
        return 404
    if isinstance(e, (InvalidImageError, InvalidIdentityError)):
        return 422
    return 400


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


def create_app(svc: Service | None, config: ServeConfig | None = None) -> FastAPI:
    """The ASGI application over one :class:`Service` (None: only to read its OpenAPI schema, see
    :func:`openapi`)."""
    cfg = config or svc.config

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        if svc is not None:  # a graceful stop (SIGTERM, Ctrl-C): requests in flight are done, then this
            await run_in_threadpool(svc.close)
            log.info("stopped: the batcher and the gallery handles are closed")

    app = FastAPI(title="facesearch", version=__version__, docs_url=None, redoc_url=None, lifespan=lifespan,
                  description="Face verification and face search over one gallery: the same operations "
                              "and JSON shapes as the `facesearch` command line's --json.")
    app.state.service = svc

    # ---- errors: JSON, a status, no traceback -------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(request, e: ApiError):
        return _error(e.status, e.message, e.headers)

    @app.exception_handler(FaceSearchError)
    async def _library_error(request, e: FaceSearchError):
        return _error(_status(e), str(e))

    @app.exception_handler(HTTPException)
    async def _http_error(request, e: HTTPException):
        return _error(e.status_code, str(e.detail), getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path"))
        return _error(422, f"{where}: {first.get('msg', 'invalid request')}" if where else "invalid request")

    @app.exception_handler(Exception)
    async def _unexpected(request, e: Exception):
        from sqlalchemy.exc import DBAPIError

        if isinstance(e, DBAPIError):
            log.warning("database error on %s: %s", request.url.path, e.__class__.__name__)
            return _error(503, "the database is not available; try again")
        log.exception("error on %s %s", request.method, request.url.path)
        return _error(500, "internal error (logged on the server)")

    # ---- every response: security headers, no caching of biometric data, metrics ---------------
    @app.middleware("http")
    async def _headers_and_metrics(request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        if request.url.path.startswith("/v1/"):
            response.headers["cache-control"] = "no-store"
        route = request.scope.get("route")
        svc.metrics.request(getattr(route, "path", "unmatched"), request.method, response.status_code,
                            time.perf_counter() - start)
        return response

    if cfg.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cfg.cors_origins), allow_credentials=False,
                           allow_methods=["GET", "POST", "PATCH", "DELETE"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type"])
    app.add_middleware(BodyLimit, max_bytes=cfg.max_body_bytes)

    # ---- keys and limits ----------------------------------------------------------------------
    def need(scope: str):
        async def check(request: Request,
                        cred: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)] = None,
                        header_key: Annotated[str | None, Depends(api_key_header)] = None) -> KeyInfo | None:
            client = request.client.host if request.client else "?"
            if not cfg.auth:
                _limit(f"ip:{client}")
                return None
            given = cred.credentials if cred is not None else header_key
            if not given:
                _limit(f"ip:{client}")
                raise ApiError(401, "an API key is needed (Authorization: Bearer KEY, or X-API-Key: KEY)",
                               {"www-authenticate": "Bearer"})
            info = await run_in_threadpool(svc.key, given)
            if info is None:  # unknown, malformed or revoked: guesses count against the address
                _limit(f"ip:{client}")
                raise ApiError(401, "the API key is not valid (unknown or revoked)", {"www-authenticate": "Bearer"})
            _limit(f"key:{info.id}")
            if not _keys.allows(info.scope, scope):
                raise ApiError(403, f"this key's scope is {info.scope}; this needs {scope}")
            return info

        return check

    def _limit(client: str) -> None:
        ok, wait = svc.buckets.take(client)
        if not ok:
            svc.metrics.limited()
            raise ApiError(429, f"too many requests: at most {cfg.rate:g} a second (burst {cfg.burst})",
                           {"retry-after": str(max(1, round(wait + 0.5)))})

    Read = Depends(need("read"))
    Write = Depends(need("write"))
    Admin = Depends(need("admin"))

    async def uploads(files: list[UploadFile]) -> list[tuple[str, bytes]]:
        if len(files) > cfg.max_files:
            raise ApiError(413, f"at most {cfg.max_files} files in one request")
        out, seen = [], set()
        for n, f in enumerate(files, 1):
            kind = (f.content_type or "application/octet-stream").lower()
            if not kind.startswith(UPLOAD_TYPES):
                raise ApiError(415, f"file {n} is {kind}: upload images (image/jpeg, image/png, ...)")
            name = upload_source(f.filename, n)
            while name in seen:  # two uploads named alike are still two probes
                name = f"{name}#{n}"
            seen.add(name)
            out.append((name, await f.read()))
        return out

    def _rule(threshold, far, fpir):
        if sum(x is not None for x in (threshold, far, fpir)) > 1:
            raise ApiError(400, "give one of threshold, far and fpir")

    async def embed(crops):
        if svc.batcher is not None:
            return await asyncio.wrap_future(svc.batcher.submit(crops))
        return await run_in_threadpool(svc.embed_direct, crops)

    TopK = Annotated[int, Query(ge=1, le=cfg.max_top_k, description="How many identities to rank.")]
    Thr = Annotated[float | None, Query(ge=0.0, le=2.0, description="Accept at this cosine distance (1:1).")]
    Far = Annotated[float | None, Query(gt=0.0, lt=1.0, description="Accept at the 1:1 threshold for this FAR.")]
    Fpir = Annotated[float | None, Query(gt=0.0, lt=1.0, description="Accept at the 1:N threshold for this FPIR.")]
    Detect = Annotated[bool, Query(description="The images are photos: find and align every face first.")]
    Fallback = Annotated[bool, Query(description="With detect: a photo without a face found is taken whole.")]

    # ---- searching ----------------------------------------------------------------------------
    @app.post("/v1/query", tags=["search"], summary="Who is in these photos? (query --json)")
    async def query(probe: Annotated[list[UploadFile], File(description="One or more probe images.")],
                    top_k: TopK = 5, threshold: Thr = None, far: Far = None, fpir: Fpir = None,
                    detect: Detect = False, detect_fallback: Fallback = False, key=Read) -> list[dict]:
        _rule(threshold, far, fpir)
        probes = await uploads(probe)
        await run_in_threadpool(svc.fs.decision, fpir, far, threshold)  # a rule the model lacks: 400 first
        prepared = await run_in_threadpool(svc.prepare, probes, detect, detect_fallback and detect)
        crops = [c for _, found in prepared if not isinstance(found, str) for c, _ in found]
        emb = await embed(crops) if crops else None
        return await run_in_threadpool(svc.search, prepared, emb, top_k, detect, threshold, far, fpir)

    @app.post("/v1/verify", tags=["search"], summary="Are a and b the same person? (verify --json)")
    async def verify(a: Annotated[UploadFile, File()], b: Annotated[UploadFile, File()], threshold: Thr = None,
                     far: Far = None, detect: Detect = False, detect_fallback: Fallback = False,
                     key=Read) -> dict:
        _rule(threshold, far, None)
        pair = await uploads([a, b])
        thr = await run_in_threadpool(svc.fs.threshold_at, far, threshold)
        prepared = await run_in_threadpool(svc.prepare, pair, detect, detect_fallback and detect)
        for name, found in prepared:
            if isinstance(found, str):
                raise ApiError(422, f"{name}: {found}")
        emb = await embed([found[0][0] for _, found in prepared])
        d = float(distance.clip(distance.paired(emb[:1], emb[1:]))[0])
        faces = tuple(f[0][1].to_dict() if f[0][1] is not None else None for _, f in prepared)
        return VerifyResult(d, thr, bool(distance.is_match(d, thr)), faces).to_dict()

    # ---- enrolling ----------------------------------------------------------------------------
    @app.post("/v1/enroll", tags=["gallery"], summary="Enroll images as faces of one identity (enroll --json)")
    async def enroll(identity: Annotated[str, Form(max_length=400, description="Who the images show.")],
                     image: Annotated[list[UploadFile], File(description="One or more images of them.")],
                     detect: Detect = False, detect_fallback: Fallback = False, key=Write) -> dict:
        validate_identity(identity)  # refused before any upload is read
        files = await uploads(image)
        handle = svc.fs if not detect else await run_in_threadpool(svc.handle, True, detect_fallback)
        report = await run_in_threadpool(lambda: handle.enroll_items([(identity, n, d) for n, d in files]))
        return report.to_dict()

    # ---- identities and faces -----------------------------------------------------------------
    Name = Annotated[str, Path(max_length=400, description="An identity's name.")]

    @app.get("/v1/identities", tags=["gallery"], summary="The identities and their face counts")
    async def identities_list(key=Read) -> list[dict]:
        rows = await run_in_threadpool(svc.fs.identities)
        return [{"identity": r.name, "faces": r.faces, "created_at": r.created_at} for r in rows]

    @app.get("/v1/identities/{name}", tags=["gallery"], summary="One identity's faces")
    async def identities_show(name: Name, key=Read) -> dict:
        faces = await run_in_threadpool(svc.fs.identity_faces, name)
        return {"identity": name, "faces": [{"face_id": f.face_id, "source": f.source} for f in faces]}

    @app.patch("/v1/identities/{name}", tags=["gallery"], summary="Rename an identity")
    async def identities_rename(name: Name, to: Annotated[str, Body(embed=True, max_length=400)],
                                key=Write) -> dict:
        await run_in_threadpool(svc.fs.rename_identity, name, to)
        return {"renamed": name, "to": to}

    @app.post("/v1/identities/{name}/merge", tags=["gallery"], summary="Merge an identity into another")
    async def identities_merge(name: Name, into: Annotated[str, Body(embed=True, max_length=400)],
                               key=Write) -> dict:
        moved = await run_in_threadpool(svc.fs.merge_identities, name, into)
        return {"merged": name, "into": into, "faces": moved}

    @app.delete("/v1/identities/{name}", tags=["gallery"], summary="Remove an identity and its faces")
    async def identities_remove(name: Name, key=Write) -> dict:
        removed = await run_in_threadpool(svc.fs.remove_identity, name)
        return {"removed": name, "faces": removed}

    @app.get("/v1/faces", tags=["gallery"], summary="The enrolled faces (of one identity)")
    async def faces_list(identity: Annotated[str | None, Query(max_length=400)] = None, key=Read) -> list[dict]:
        rows = await run_in_threadpool(svc.fs.faces, identity)
        return [{"face_id": f.face_id, "identity": f.identity, "source": f.source} for f in rows]

    FaceId = Annotated[int, Path(ge=1, le=2**62, description="A face id (from query, faces or identities).")]

    @app.delete("/v1/faces/{face_id}", tags=["gallery"], summary="Remove one face")
    async def faces_remove(face_id: FaceId, key=Write) -> dict:
        removed = await run_in_threadpool(svc.fs.remove_faces, [face_id])
        if not removed:
            raise ApiError(404, f"no face with id {face_id}")
        return {"removed": removed, "not_enrolled": 0}

    @app.get("/v1/faces/{face_id}/image", tags=["gallery"], summary="A face's stored crop (PNG)",
             response_class=Response, responses={200: {"content": {"image/png": {}}}})
    async def face_image(face_id: FaceId, key=Read):
        png = await run_in_threadpool(svc.crop, face_id)
        if png is None:
            raise ApiError(404, f"no stored crop for face {face_id}")
        return Response(png, media_type="image/png")

    @app.get("/v1/info", tags=["gallery"], summary="The model, thresholds, counts and index (info --json)")
    async def info(key=Read) -> dict:
        return await run_in_threadpool(svc.fs.info)

    @app.get("/v1/whoami", tags=["service"], summary="The scope of the key given")
    async def whoami(key=Read) -> dict:
        return {"auth": cfg.auth, "scope": key.scope if key is not None else "admin",
                "key": key.prefix if key is not None else None}

    # ---- keys (admin) -------------------------------------------------------------------------
    @app.get("/v1/keys", tags=["keys"], summary="The API keys (never the keys themselves)")
    async def keys_list(key=Admin) -> list[dict]:
        return [k.to_dict() for k in await run_in_threadpool(_keys.list_keys, svc.fs.store)]

    @app.post("/v1/keys", tags=["keys"], summary="Create a key (shown once)", status_code=201)
    async def keys_create(scope: Annotated[Literal["read", "write", "admin"], Body(embed=True)],
                          name: Annotated[str | None, Body(embed=True, max_length=100)] = None,
                          key=Admin) -> dict:
        new, k = await run_in_threadpool(_keys.create, svc.fs.store, scope, name)
        return dict(k.to_dict(), key=new)

    @app.delete("/v1/keys/{key_id}", tags=["keys"], summary="Revoke a key")
    async def keys_revoke(key_id: Annotated[int, Path(ge=1, le=2**62)], key=Admin) -> dict:
        return (await run_in_threadpool(_keys.revoke, svc.fs.store, key_id)).to_dict()

    # ---- health, metrics ----------------------------------------------------------------------
    @app.get("/healthz", tags=["service"], summary="The process answers")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", tags=["service"], summary="The model is loaded and the store answers")
    async def readyz():
        state = await run_in_threadpool(svc.ready)
        ok = all(state.values())
        return JSONResponse(dict(state, ready=ok), status_code=200 if ok else 503)

    @app.get("/metrics", tags=["service"], summary="Prometheus metrics (text format 0.0.4)",
             response_class=PlainTextResponse)
    async def metrics(key=Read):
        text = svc.metrics.render(await run_in_threadpool(svc.gauges))
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    # ---- the web page -------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def page():
        return HTMLResponse(_asset("index.html"))

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str):
        kind = STATIC.get(name)
        if kind is None:
            raise ApiError(404, "not found")
        return Response(_asset(name), media_type=kind)

    return app


def openapi() -> dict:
    """The API's OpenAPI schema with the default limits: what ``/openapi.json`` serves, committed as
    ``docs/openapi.json`` (``facesearch serve --openapi`` prints it)."""
    return create_app(None, ServeConfig()).openapi()


def _asset(name: str) -> bytes:
    return resources.files("facesearch.serve").joinpath("web", name).read_bytes()
