"""The review service's HTTP API (``idu serve`` runs it with uvicorn on 127.0.0.1).

    GET  /api/health                         liveness
    GET  /api/reviews                        pending reviews, oldest first
    POST /api/runs/{run_id}/reviews/{key}    a decision (flows.update_scene.ReviewDecision as JSON)
    GET  /api/runs                           recent IDU runs
    GET  /files/{run_id}/{change_id}/crop    the change's first crop (report thumbnails)

Refusals are HTTP 409 (the run does not wait for this decision) or 422 (the server refused the input),
with ``{"detail": reason}``. The reviewers' pages, accounts and roles are the review-UI issue's: until
they land this API listens on 127.0.0.1 only.
"""

from __future__ import annotations

from typing import Any

from fastapi import Body, FastAPI, HTTPException
from fastapi.responses import FileResponse

from review_ui import service

app = FastAPI(title="IDU review", docs_url=None, redoc_url=None)


@app.get("/api/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/api/reviews")
def reviews() -> list[dict[str, Any]]:
    return service.pending_reviews()


@app.get("/api/runs")
def runs() -> list[dict[str, Any]]:
    return service.recent_runs()


@app.post("/api/runs/{run_id}/reviews/{key}")
def decide(run_id: str, key: str, decision: dict[str, Any] = Body(...)) -> dict[str, Any]:
    try:
        return service.decide(run_id, key, decision)
    except service.ReviewError as e:
        status = 422 if "refused" in str(e) else 409
        raise HTTPException(status, str(e)) from None


@app.get("/files/{run_id}/{change_id}/crop")
def crop(run_id: str, change_id: str) -> FileResponse:
    f = service.crop_path(run_id, change_id)
    if f is None:
        raise HTTPException(404, "no such crop")
    return FileResponse(f)
