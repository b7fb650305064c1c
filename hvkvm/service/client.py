"""A small client of the management API: ``http.client`` over the service's Unix socket.

Kept free of FastAPI and uvicorn so ``hvkvm vm ...`` starts quickly.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from pathlib import Path
from urllib.parse import quote, urlencode


class ClientError(Exception):
    """Base of the client's errors; ``str()`` is one line."""


class ServiceUnavailable(ClientError):
    """No service listens on the socket."""


class AccessDenied(ClientError):
    """The socket or the service refused this user."""


class ApiError(ClientError):
    """The service answered with an error status."""

    def __init__(self, status: int, message: str, body: dict | None = None):
        super().__init__(message)
        self.status = status
        self.body = body or {}


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self.unix_path)
        except BaseException:
            s.close()
            raise
        self.sock = s


class Client:
    """Calls the API on ``socket_path``."""

    def __init__(self, socket_path: str | os.PathLike, timeout: float | None = 300.0):
        self.socket_path = str(socket_path)
        self.timeout = timeout

    def _open(self, method: str, path: str, body=None, query: dict | None = None,
              timeout: float | None = -1.0) -> http.client.HTTPResponse:
        q = {k: v for k, v in (query or {}).items() if v is not None}
        if q:
            path += "?" + urlencode({k: (str(v).lower() if isinstance(v, bool) else v)
                                     for k, v in q.items()})
        conn = _UnixConnection(self.socket_path, self.timeout if timeout == -1.0 else timeout)
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=data, headers=headers)
            return conn.getresponse()
        except (FileNotFoundError, ConnectionRefusedError):
            conn.close()
            raise ServiceUnavailable(f"the VM service is not running (nothing listens on "
                                     f"{self.socket_path}); start it with `hvkvm service`") from None
        except PermissionError:
            conn.close()
            raise AccessDenied(f"permission denied on {self.socket_path}: the VM service "
                               f"belongs to another user") from None
        except socket.timeout:
            conn.close()
            raise ClientError(f"the VM service did not answer {method} {path} in time") from None
        except OSError as e:
            conn.close()
            raise ServiceUnavailable(f"cannot reach the VM service on {self.socket_path}: "
                                     f"{e.strerror or e}") from None

    def call(self, method: str, path: str, body=None, query: dict | None = None):
        """JSON in, JSON out; ApiError for an error status."""
        resp = self._open(method, path, body, query)
        try:
            raw = resp.read()
        finally:
            resp.close()
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = {"error": raw.decode(errors="replace")[:200]}
        if resp.status >= 400:
            msg = (data or {}).get("error") if isinstance(data, dict) else None
            if not msg and isinstance(data, dict) and "detail" in data:
                msg = str(data["detail"])
            msg = msg or f"HTTP {resp.status}"
            if resp.status == 403:
                raise AccessDenied(msg)
            raise ApiError(resp.status, msg, data if isinstance(data, dict) else None)
        return data

    def stream(self, path: str, query: dict | None = None) -> http.client.HTTPResponse:
        """An open streaming response (the caller reads and closes it)."""
        resp = self._open("GET", path, query=query, timeout=None)
        if resp.status >= 400:
            raw = resp.read()
            resp.close()
            try:
                msg = json.loads(raw).get("error")
            except (ValueError, AttributeError):
                msg = None
            if resp.status == 403:
                raise AccessDenied(msg or "forbidden")
            raise ApiError(resp.status, msg or f"HTTP {resp.status}")
        return resp

    # -- convenience ------------------------------------------------------------------------------

    @staticmethod
    def vm_path(name: str, action: str = "") -> str:
        """``/v1/vms/NAME[/ACTION]`` with the name quoted."""
        return f"/v1/vms/{quote(name, safe='')}" + (f"/{action}" if action else "")

    def create(self, **definition) -> dict:
        return self.call("POST", "/v1/vms", definition)

    def list(self) -> list[dict]:
        return self.call("GET", "/v1/vms")["vms"]

    def show(self, name: str) -> dict:
        return self.call("GET", self.vm_path(name))

    def start(self, name: str, wait: bool = True, timeout: float | None = None) -> dict:
        return self.call("POST", self.vm_path(name, "start"), query={"wait": wait,
                                                                     "timeout": timeout})

    def pause(self, name: str) -> dict:
        return self.call("POST", self.vm_path(name, "pause"))

    def resume(self, name: str) -> dict:
        return self.call("POST", self.vm_path(name, "resume"))

    def stop(self, name: str, timeout: float | None = None, wait: bool = True) -> dict:
        body = {"timeout": timeout} if timeout is not None else None
        return self.call("POST", self.vm_path(name, "stop"), body, {"wait": wait})

    def kill(self, name: str) -> dict:
        return self.call("POST", self.vm_path(name, "kill"))

    def delete(self, name: str) -> None:
        self.call("DELETE", self.vm_path(name))

    def stats(self, name: str) -> dict:
        return self.call("GET", self.vm_path(name, "stats"))

    def events(self, **query) -> list[dict]:
        return self.call("GET", "/v1/events", query=query)["events"]


def default_client_socket(socket_path: str | None, state_dir: str | None) -> Path:
    """``--socket``, else ``--state-dir``'s, else ``$HVKVM_SOCKET``, else the default."""
    from .paths import default_socket
    if socket_path:
        return Path(socket_path)
    if state_dir:
        return default_socket(state_dir)
    return default_socket()
