"""The VM Service (Hyper-V's VMMS role), its VM Worker processes, management API and event log.

* :mod:`.server`   ``hvkvm service``: the daemon (socket, peer credentials, uvicorn, signals)
* :mod:`.api`      the HTTP/JSON management API (FastAPI; OpenAPI at ``/openapi.json``)
* :mod:`.manager`  definitions, worker spawning and supervision, lifecycle, restart recovery
* :mod:`.worker`   the VM Worker process (``python -m hvkvm.service.worker``)
* :mod:`.proto`    the service <-> worker protocol and worker identity checks
* :mod:`.store`    SQLite: definitions, runtime records, the event log with retention
* :mod:`.client`   an ``http.client`` API client over the Unix socket
* :mod:`.cli`      ``hvkvm service``, ``hvkvm vm ...``, ``hvkvm events``
"""
