"""The HTTP API and dashboard of `casstore serve` (FastAPI + uvicorn, imported only when serving).

`casstore.service.status` has no web dependency: `casstore status` uses it too.
"""
