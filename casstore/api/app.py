"""The FastAPI application of `casstore serve`: the seed's /api/cloud/* endpoints, jobs, the dashboard.

    GET  /api/cloud/status                 statistics, recent backups, schedule, last sync, costs
    POST /api/cloud/backup[?wait=1]        202 + job (or the finished job); 409 while a run is on; the job
                                           snapshots, then syncs to the configured remote (&sync=0: not)
    GET  /api/cloud/backups?limit=10       newest first (&host=NAME or &all_hosts=1; default: the host rule)
    POST /api/cloud/sync[?wait=1]          202 + job; 409 when no remote is configured
    GET  /api/jobs/<id>                    a job's state and result
    GET  /api/cloud/backup/<id>[?path=]    the snapshot as to_dict() gives it, streamed as JSON
    GET  /api/cloud/backup/<id>/tree?path= one directory's entries (the dashboard's snapshot view)
    GET  /api/cloud/backup/<id>/file?path= one file's bytes
    GET  /api/cloud/history?path=&key=     how a file or a value changed (api/query_routes.py)
    GET  /api/cloud/diff?a=&b=&path=       key paths changed inside JSON files
    GET  /                                 the dashboard;  /openapi.json, /docs
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from importlib import metadata, resources
from urllib.parse import quote

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from casstore.api.jobs import JobManager
from casstore.api.query_routes import add_query_routes
from casstore.api.reading import BadPath, RepoAccess, clean_path, directory_listing, find, stream_file, stream_snapshot
from casstore.api.security import GuardMiddleware
from casstore.api.views import backups_view, status_view
from casstore.client import Repository
from casstore.errors import CasstoreError, RepositoryNotFound, SnapshotNotFound, SourceError
from casstore.format.tree import EntryType
from casstore.read.reader import PathNotFound, Snapshot
from casstore.service.runs import RunBusy, snapshot_step, sync_step
from casstore.settings import Settings
from casstore.snapshot.source import require_source

JOB_ID = r"^[0-9a-f]{32}$"
WAIT_TIMEOUT = 3600.0
SHUTDOWN_GRACE = 30.0   # seconds a running backup/sync/scheduled run gets to finish its step on shutdown
bearer = HTTPBearer(auto_error=False, description="CASSTORE_API_TOKEN, when the server has one")


def create_app(settings: Settings, *, allowed_hosts: set[str] | None, scheduler=None) -> FastAPI:
    """The app; `allowed_hosts` None answers any Host (wildcard bind with a token)."""
    access = RepoAccess(settings)
    jobs = JobManager(settings, on_finished=access.invalidate)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if scheduler is not None:
            scheduler.start_thread()
        yield
        if scheduler is not None:
            scheduler.stop_thread(SHUTDOWN_GRACE)
        jobs.shutdown(SHUTDOWN_GRACE)
        access.close()

    app = FastAPI(title="casstore", version=_version(), lifespan=lifespan, default_response_class=NamesJSONResponse,
                  description="Snapshots of a folder, synced off-site, readable as JSON. The seed's "
                              "/api/cloud/* endpoints, background jobs and a dashboard at /.")
    app.state.access, app.state.jobs, app.state.scheduler = access, jobs, scheduler
    if scheduler is not None:
        scheduler.on_run = lambda record: access.invalidate()
    app.add_middleware(GuardMiddleware, token=settings.api_token, allowed_hosts=allowed_hosts)
    _errors(app)
    _routes(app, settings, access, jobs)
    _describe_errors(app)
    return app


ERROR_SCHEMA = {"title": "Error", "type": "object", "required": ["success", "error"],
                "properties": {"success": {"type": "boolean", "const": False}, "error": {"type": "string"}}}


def _describe_errors(app: FastAPI) -> None:
    """The OpenAPI description says what the 422 handler sends: the one error shape, not FastAPI's."""
    def openapi() -> dict:
        if app.openapi_schema is None:
            spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            schemas = spec.get("components", {}).get("schemas", {})
            if "HTTPValidationError" in schemas:
                schemas["HTTPValidationError"] = ERROR_SCHEMA
                schemas.pop("ValidationError", None)
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _version() -> str:
    return metadata.version("casstore")   # the installed package's, as `casstore --version` shows


def _errors(app: FastAPI) -> None:
    @app.exception_handler(SnapshotNotFound)
    @app.exception_handler(PathNotFound)
    @app.exception_handler(RepositoryNotFound)
    async def not_found(request: Request, exc: Exception):
        return JSONResponse({"success": False, "error": str(exc)}, status_code=404)

    @app.exception_handler(BadPath)
    async def bad_path(request: Request, exc: Exception):
        return JSONResponse({"success": False, "error": str(exc)}, status_code=400)

    @app.exception_handler(RunBusy)
    async def busy(request: Request, exc: Exception):
        return JSONResponse({"success": False, "error": str(exc), "running_job": _running(request)},
                            status_code=409)

    @app.exception_handler(CasstoreError)
    async def casstore_error(request: Request, exc: Exception):
        return JSONResponse({"success": False, "error": str(exc)}, status_code=500)

    # FastAPI's own answers (404 for an unknown route, 405, 422 for a bad parameter) take the same
    # {"success": false, "error"} shape as ours, so a client reads one shape for every error
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: Exception):
        assert isinstance(exc, StarletteHTTPException)
        return JSONResponse({"success": False, "error": str(exc.detail)}, status_code=exc.status_code,
                            headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: Exception):
        assert isinstance(exc, RequestValidationError)
        return JSONResponse({"success": False, "error": validation_message(exc)}, status_code=422)


def validation_message(exc: RequestValidationError) -> str:
    """'limit: Input should be greater than or equal to 1; ...' from FastAPI's error list."""
    parts = []
    for error in exc.errors()[:5]:
        loc = [str(p) for p in error.get("loc", ())]
        if loc and loc[0] in ("query", "path", "body", "header"):
            loc = loc[1:]     # where the parameter came from; its name follows
        where = ".".join(loc)
        parts.append(f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg", "invalid")))
    return "invalid request: " + "; ".join(parts)


def _running(request: Request) -> str | None:
    current = request.app.state.jobs.current
    return current.id if current else None


def _routes(app: FastAPI, settings: Settings, access: RepoAccess, jobs: JobManager) -> None:
    auth = [Depends(bearer)]
    add_query_routes(app, access, auth)   # history and the value diff (api/query_routes.py)

    @app.get("/", include_in_schema=False)
    def dashboard() -> HTMLResponse:
        return _dashboard()

    @app.get("/api/cloud/status", dependencies=auth, summary="Statistics, recent backups, schedule, sync, cost")
    def status():
        snapshots, stored = access.listing()
        current = jobs.current.as_dict() if jobs.current else None
        return status_view(settings, snapshots, stored, running_job=current)

    @app.get("/api/cloud/backups", dependencies=auth, summary="Backups (snapshots), newest first")
    def backups(limit: int = Query(10, ge=1, le=10000), host: str | None = Query(None, max_length=255),
                all_hosts: bool = False):
        return backups_view(access.snapshots(host, all_hosts), limit)

    @app.post("/api/cloud/backup", dependencies=auth, status_code=202,
              summary="Take a backup in the background (?wait=1: return when it is done)",
              responses={409: {"description": "a backup or sync is already running"}})
    def backup(wait: bool = False, sync: bool = True, allow_empty: bool = False):
        try:
            require_source(settings.source, allow_empty=allow_empty or settings.allow_empty,
                           hint="set CASSTORE_SOURCE")
        except SourceError as exc:
            return JSONResponse({"success": False, "error": str(exc)}, status_code=409)
        run_settings = replace(settings, allow_empty=True)   # checked just above
        steps = (("snapshot", snapshot_step),) + ((("sync", sync_step),) if sync and settings.remote else ())
        return _job_response(jobs.start("backup", steps, run_settings), wait)

    @app.post("/api/cloud/sync", dependencies=auth, status_code=202,
              summary="Sync new snapshots to the configured remote in the background",
              responses={409: {"description": "no remote configured, or a run is already on"}})
    def sync(wait: bool = False):
        if not settings.remote:
            return JSONResponse({"success": False, "error": "no remote configured: set CASSTORE_REMOTE or "
                                 "CLOUD_PROVIDER (the local repository is the only copy)"}, status_code=409)
        if not access.exists:
            return JSONResponse({"success": False, "error": "no snapshot to sync yet"}, status_code=409)
        return _job_response(jobs.start("sync", (("sync", sync_step),)), wait)

    @app.get("/api/jobs/{job_id}", dependencies=auth, summary="A background job's state and result",
             responses={404: {"description": "no such job"}})
    def job(job_id: str):
        found = jobs.get(job_id) if _is_job_id(job_id) else None
        if found is None:
            return JSONResponse({"success": False, "error": "no such job"}, status_code=404)
        return {"success": True, "job": found.as_dict()}

    @app.get("/api/cloud/backup/{backup_id}", dependencies=auth,
             summary="A backup as the seed's dict (to_dict()), streamed; ?path= for one source or file",
             responses={404: {"description": "no such backup or path"}, 400: {"description": "invalid path"}})
    def backup_json(backup_id: str, path: str = Query("", max_length=4096),
                    host: str | None = Query(None, max_length=255), all_hosts: bool = False):
        wanted = clean_path(path)

        def prepare():
            repo, snapshot, entry, real = _open_path(access, backup_id, wanted, host, all_hosts)
            try:    # walks the trees and makes the first piece: a hostile snapshot is an error status
                return repo, stream_snapshot(snapshot, entry, real, whole=not wanted)
            except BaseException:
                access.checkin(repo, broken=True)
                raise

        repo, parts = _fresh_on_failure(access, prepare)
        return StreamingResponse(_returning(parts, access, repo), media_type="application/json")

    @app.get("/api/cloud/backup/{backup_id}/tree", dependencies=auth,
             summary="One directory of a backup: its entries (name, type, size, mode, mtime, symlink target)",
             responses={404: {"description": "no such backup or directory"}, 400: {"description": "invalid path"}})
    def backup_tree(backup_id: str, path: str = Query("", max_length=4096),
                    limit: int = Query(5000, ge=1, le=100000)):
        repo, snapshot, entry, real = _open_path(access, backup_id, clean_path(path))
        try:
            return directory_listing(snapshot, entry, real, limit)
        finally:
            access.checkin(repo)

    @app.get("/api/cloud/backup/{backup_id}/file", dependencies=auth, summary="One file's bytes",
             response_class=Response, responses={404: {"description": "no such backup or file"}})
    def backup_file(backup_id: str, path: str = Query(..., min_length=1, max_length=4096)):
        wanted = clean_path(path)

        def prepare():
            repo, snapshot, entry, real = _open_path(access, backup_id, wanted)
            if entry is None or entry.type is not EntryType.FILE:
                access.checkin(repo)
                raise PathNotFound(f"{wanted or '/'} is not a file in backup {snapshot.short_id}")
            try:    # opened first: a size the chunks do not hold is an error status, not a short 200
                return repo, entry, real, snapshot.open(real)
            except BaseException:
                access.checkin(repo, broken=True)
                raise

        repo, entry, real, opened = _fresh_on_failure(access, prepare)
        name = real.rsplit("/", 1)[-1]
        headers = {"content-length": str(entry.size),
                   "content-disposition": f"attachment; filename*=UTF-8''{quote(name, errors='replace')}"}
        return StreamingResponse(_returning(stream_file(opened), access, repo),
                                 media_type="application/octet-stream", headers=headers)


def _fresh_on_failure(access: RepoAccess, prepare):
    """`prepare()`, once more with a fresh listing and fresh readers if it fails reading the
    repository: a CLI gc or forget since they were loaded leaves pooled indexes naming packs
    that are gone, and the cached listing naming snapshots that are (issue 13, case 12)."""
    try:
        return prepare()
    except (PathNotFound, SnapshotNotFound, BadPath):
        raise
    except CasstoreError:
        access.refresh()
        return prepare()


def _open_path(access: RepoAccess, backup_id: str, path: str, host: str | None = None, all_hosts: bool = False):
    """(reader, snapshot, entry, real path) for a request; the reader goes back to the pool on errors.
    A snapshot only the configured remote holds is read from there (the reader's remote view)."""
    info = access.resolve(backup_id, host, all_hosts)
    repo = access.checkout()
    try:
        snapshot = Snapshot(repo.reader_for(info), info)
        entry, real = find(snapshot, path)
    except PathNotFound:
        access.checkin(repo)
        raise
    except BaseException:
        access.checkin(repo, broken=True)
        raise
    return repo, snapshot, entry, real


class NamesJSONResponse(JSONResponse):
    """JSON that may carry names that are not UTF-8 (their bytes decoded with surrogateescape, as
    lone surrogates): those are sent as \\udcXX escapes, never a 500 for a hostile name."""

    def render(self, content: object) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return json.dumps(content, allow_nan=False, separators=(",", ":")).encode("ascii")


def _job_response(job, wait: bool):
    if wait:
        job.done.wait(WAIT_TIMEOUT)
        doc = job.as_dict()
        return JSONResponse({"success": job.state == "succeeded", "job_id": job.id, "backup_id": doc["backup_id"],
                             "job": doc, "error": job.error}, status_code=200)
    return {"success": True, "job_id": job.id, "job": job.as_dict(), "poll": f"/api/jobs/{job.id}"}


def _returning(parts: Iterator[bytes], access: RepoAccess, repo: Repository) -> Iterator[bytes]:
    """Stream `parts`, then give the reader back to the pool."""
    broken = True
    try:
        yield from parts
        broken = False
    finally:
        access.checkin(repo, broken=broken)


def _is_job_id(text: str) -> bool:
    return re.match(JOB_ID, text) is not None


_PAGE: str | None = None


def _dashboard() -> HTMLResponse:
    global _PAGE
    if _PAGE is None:
        _PAGE = resources.files("casstore.api").joinpath("dashboard.html").read_text(encoding="utf-8")
    nonce = secrets.token_urlsafe(16)
    csp = (f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; img-src data:; "
           "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return HTMLResponse(_PAGE.replace("{{nonce}}", nonce), headers={"content-security-policy": csp,
                                                                     "cache-control": "no-store"})
