"""The API's questions across snapshots (issue 16), as their own routes:

    GET /api/cloud/history?path=&key=&since=&limit=   rows where the file or the key's value changed
    GET /api/cloud/diff?a=&b=latest&path=             key paths added, removed, changed in JSON files

Both read every host's snapshots, as /api/cloud/backups lists them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse

from casstore.api.reading import RepoAccess, clean_path
from casstore.read.history import history, parse_since
from casstore.read.jsondiff import diff_snapshot_values
from casstore.read.reader import Snapshot
from casstore.read.values import BadQuery

NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "no such backup or path"},
                                              400: {"description": "bad path, key or time"}}


def add_query_routes(app: FastAPI, access: RepoAccess, auth: Sequence[Any]) -> None:
    @app.exception_handler(BadQuery)
    async def bad_query(request: Request, exc: Exception):
        return JSONResponse({"success": False, "error": str(exc)}, status_code=400)

    @app.get("/api/cloud/history", dependencies=list(auth), responses=NOT_FOUND,
             summary="One row per backup where a file, or the value at ?key=a.b.c inside it, changed")
    def file_history(path: str = Query(..., min_length=1, max_length=4096),
                     key: str | None = Query(None, max_length=1024), since: str | None = Query(None, max_length=64),
                     limit: int | None = Query(None, ge=1, le=100000)):
        wanted = clean_path(path)
        start = parse_since(since) if since else None
        with access.reader() as repo:
            rows = history(repo, wanted, key, since=start, limit=limit, all_hosts=True)
        return {"success": True, "path": wanted, "key": key, "rows": [r.as_dict() for r in rows]}

    @app.get("/api/cloud/diff", dependencies=list(auth), responses=NOT_FOUND,
             summary="What changed inside the JSON files between backups ?a= and ?b= (below ?path=)")
    def value_diff(a: str = Query(..., max_length=64), b: str = Query("latest", max_length=64),
                   path: str = Query("", max_length=4096)):
        wanted = clean_path(path)
        old, new = access.resolve(a), access.resolve(b)
        with access.reader() as repo:
            diffs = diff_snapshot_values(Snapshot(repo.reader_for(old), old), Snapshot(repo.reader_for(new), new),
                                         wanted)
        return {"success": True, "a": old.id, "b": new.id, "path": wanted, "files": [d.as_dict() for d in diffs]}
