"""The management API (the WMI role): HTTP/JSON over the service's Unix socket, with FastAPI.

Every error is ``{"error": "one line"}`` (validation errors add ``"field"`` and FastAPI's
``"detail"``): 400 bad input, 403 another user, 404 no such partition, 409 wrong state,
422 a field that does not validate. The OpenAPI document is at ``/openapi.json`` (``/docs``
renders it). Mutating calls are logged as ``api`` events naming the caller's uid and pid
(SO_PEERCRED, put in the ASGI scope by :mod:`hvkvm.service.server`).
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Literal

from fastapi import Body, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .manager import NAME_RE, ServiceError, VmService
from .store import SEVERITIES, parse_time

API_VERSION = "1"


class DiskSpec(BaseModel):
    """A raw disk image offered on its own synthetic SCSI controller (storvsc)."""

    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="absolute path of a raw image file")
    readonly: bool = False
    direct: bool = Field(False, description="O_DIRECT I/O")


class NicSpec(BaseModel):
    """A synthetic network adapter (netvsc) on a host TAP device (opened, or created for the
    run), as ``hvkvm run --net`` takes it."""

    model_config = ConfigDict(extra="forbid")
    tap: str = Field(min_length=1, max_length=15, description="host TAP device name")
    mac: str | None = Field(None, description="aa:bb:cc:dd:ee:ff (default: from the instance)")
    netns: str | None = Field(None, description="network namespace of the TAP device")
    vnet_hdr: bool = False


class VmCreate(BaseModel):
    """A new partition definition."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_RE.pattern, description="1-48 of [A-Za-z0-9_.-]")
    image: str = Field(min_length=1, description="built-in image name or absolute ELF path")
    vcpus: int = Field(1, ge=1, le=64)
    memory: int | str = Field(64 << 20, description="bytes, or a size like 64M / 1G")
    cmdline: str | None = Field(None, max_length=4000,
                                description="guest command line (default: the image name, "
                                            "plus cpus=N with several vCPUs)")
    disks: list[DiskSpec] = Field(default_factory=list, max_length=16)
    nics: list[NicSpec] = Field(default_factory=list, max_length=8)
    autostart: bool = Field(False, description="start when the service starts")

    @field_validator("memory")
    @classmethod
    def _memory(cls, v):
        from ..partition.config import parse_size
        try:
            return parse_size(v)
        except ValueError as e:
            raise ValueError(str(e)) from None


class StopRequest(BaseModel):
    """How long a graceful stop may take before the hard stop."""

    model_config = ConfigDict(extra="forbid")
    timeout: float = Field(30.0, gt=0, le=3600)


class InputRequest(BaseModel):
    """Text for the guest's serial port (COM1)."""

    model_config = ConfigDict(extra="forbid")
    data: str = Field(max_length=65536)


def _error_line(exc: RequestValidationError) -> tuple[str, str]:
    errs = exc.errors()
    if not errs:
        return "request", "invalid request"
    e = errs[0]
    loc = [str(x) for x in e.get("loc", ()) if x not in ("body", "query", "path")]
    fieldname = ".".join(loc) or "body"
    msg = e.get("msg", "invalid")
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    return fieldname, f"{fieldname}: {msg}"


def create_app(svc: VmService) -> FastAPI:
    """The FastAPI application over a :class:`VmService`."""
    app = FastAPI(title="hvkvm VM Service", version=API_VERSION,
                  description="Manage hvkvm child partitions: definitions, lifecycle, console, "
                              "stats and the event log. Served on a Unix socket to its own user.")

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        fieldname, line = _error_line(exc)
        return JSONResponse(status_code=422, content={
            "error": line, "field": fieldname,
            "detail": json.loads(json.dumps(exc.errors(), default=str))})

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError):
        return JSONResponse(status_code=exc.status, content={"error": str(exc)})

    def peer(request: Request) -> dict:
        return request.scope.get("hvkvm.peer") or {}

    def act(request: Request, verb: str, name: str | None, fn, details: dict | None = None):
        p = peer(request)
        who = f"uid {p.get('uid')}, pid {p.get('pid')}"
        svc.event("info", "api", f"{verb} requested ({who})", name, {"peer": p, **(details or {})})
        try:
            return fn()
        except ServiceError as e:
            svc.event("warning", "api", f"{verb} refused: {e}", name, {"peer": p})
            raise

    # -- service --------------------------------------------------------------------------------

    @app.get("/v1/service", summary="The service itself")
    def service_info():
        return {"service": "hvkvm", "api": API_VERSION, "pid": os.getpid(),
                "uid": os.geteuid(), "state_dir": str(svc.state_dir), "started": svc.started,
                "on_exit": svc.on_exit, "partitions": len(svc.store.list_vms()),
                "workers": len(svc.handles)}

    # -- partitions -----------------------------------------------------------------------------

    @app.get("/v1/vms", summary="List partitions")
    def list_vms():
        return {"vms": svc.list()}

    @app.post("/v1/vms", status_code=201, summary="Create a partition definition")
    def create_vm(request: Request, body: VmCreate):
        return act(request, "create", body.name, lambda: svc.create(
            body.name, body.image, vcpus=body.vcpus, memory=body.memory, cmdline=body.cmdline,
            disks=[d.model_dump() for d in body.disks],
            nics=[n.model_dump(exclude_none=True) for n in body.nics],
            autostart=body.autostart))

    @app.get("/v1/vms/{name}", summary="Show a partition")
    def show_vm(name: str):
        return svc.show(name)

    @app.delete("/v1/vms/{name}", status_code=204, summary="Delete a stopped partition")
    def delete_vm(request: Request, name: str):
        act(request, "delete", name, lambda: svc.delete(name))
        return Response(status_code=204)

    @app.post("/v1/vms/{name}/start", summary="Start: spawn its VM Worker process")
    def start_vm(request: Request, name: str,
                 wait: bool = Query(True, description="return once Running (or failed)"),
                 timeout: float = Query(60.0, gt=0, le=600)):
        return act(request, "start", name, lambda: svc.start(name, wait=wait, timeout=timeout))

    @app.post("/v1/vms/{name}/pause", summary="Pause: hold the vCPUs at a safe point")
    def pause_vm(request: Request, name: str):
        return act(request, "pause", name, lambda: svc.pause(name))

    @app.post("/v1/vms/{name}/resume", summary="Resume a paused partition")
    def resume_vm(request: Request, name: str):
        return act(request, "resume", name, lambda: svc.resume(name))

    @app.post("/v1/vms/{name}/stop",
              summary="Stop: graceful through the shutdown integration service, hard after "
                      "the timeout (at once without one)")
    def stop_vm(request: Request, name: str, body: StopRequest | None = Body(None),
                wait: bool = Query(True)):
        timeout = body.timeout if body is not None else 30.0
        return act(request, "stop", name, lambda: svc.stop(name, timeout=timeout, wait=wait),
                   {"timeout": timeout})

    @app.post("/v1/vms/{name}/kill", summary="Kill the worker process (SIGKILL)")
    def kill_vm(request: Request, name: str):
        return act(request, "kill", name, lambda: svc.kill(name))

    @app.get("/v1/vms/{name}/stats",
             summary="Exit counts, worker CPU time, memory, serial, SynIC and VSP I/O counters")
    def stats_vm(name: str):
        return svc.stats(name)

    @app.post("/v1/vms/{name}/console/input", summary="Send text to the guest's COM1")
    def console_input(request: Request, name: str, body: InputRequest):
        return act(request, "console input", name, lambda: svc.console_input(name, body.data),
                   {"bytes": len(body.data)})

    @app.get("/v1/vms/{name}/console", response_class=StreamingResponse,
             summary="Serial output: the recent ring, then new output while follow=true "
                     "(application/octet-stream); the last run's output when none runs")
    async def console(name: str, follow: bool = True,
                      tail: int = Query(65536, ge=0, le=1 << 20)):
        sock_path, log_path = await asyncio.to_thread(svc.console_source, name)
        if sock_path is not None:
            try:
                reader, writer = await asyncio.open_unix_connection(str(sock_path))
                writer.write(json.dumps({"op": "console", "follow": follow,
                                         "tail": tail}).encode() + b"\n")
                await writer.drain()
                ack = json.loads(await reader.readline() or b"{}")
            except (OSError, ValueError):
                ack = {}
            if ack.get("ok"):
                async def stream():
                    try:
                        while True:
                            chunk = await reader.read(65536)
                            if not chunk:
                                return
                            yield chunk
                    finally:
                        writer.close()
                return StreamingResponse(stream(), media_type="application/octet-stream",
                                         headers={"X-Hvkvm-Live": "1"})
        data = b""
        try:
            with open(log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - tail))
                data = f.read()
        except OSError:
            pass
        return Response(data, media_type="application/octet-stream",
                        headers={"X-Hvkvm-Live": "0"})

    # -- events ---------------------------------------------------------------------------------

    @app.get("/v1/events", summary="Query the event log (newest `limit`, oldest first)")
    def events(partition: str | None = None,
               severity: Literal[SEVERITIES] | None = Query(  # type: ignore[valid-type]
                   None, description="this severity or worse"),
               since: str | None = Query(None, description="10m, 2h, 1d, @EPOCH or ISO 8601"),
               until: str | None = Query(None, description="same forms as since"),
               source: str | None = None,
               limit: int = Query(100, ge=1, le=10000)):
        bounds = {}
        for key, value in (("since", since), ("until", until)):
            if value is not None:
                try:
                    bounds[key] = parse_time(value)
                except ValueError as e:
                    raise ServiceError(f"{key}: {e}", 422) from None
        return {"events": svc.store.query_events(partition=partition, severity=severity,
                                                 source=source, limit=limit, **bounds)}

    return app
