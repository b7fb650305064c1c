"""Network namespaces this process creates for its TAP devices (the demo, ``hvkvm bench net`` and
the tests): traffic of the synthetic NICs never touches the root namespace.

One place decides how such a namespace is made: ``ip netns add``, IPv6 off inside (no router
solicitations or MLD reports on the TAP to confuse a frame count), ``lo`` up; and one owner
deletes it (:meth:`NetNamespace.close`, idempotent, ``with`` support)."""

from __future__ import annotations

import shutil
import socket
import subprocess

from .netvsc import _in_netns


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``ip ARGS`` (iproute2), output captured as text; CalledProcessError on failure if ``check``."""
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def _ipv6_off() -> None:
    for key in ("all", "default"):
        with open(f"/proc/sys/net/ipv6/conf/{key}/disable_ipv6", "w") as f:
            f.write("1")


class NetNamespace:
    """A network namespace named ``name``, created here with IPv6 off and ``lo`` up.

    OSError if iproute2 is missing or the namespace cannot be created (no root /
    CAP_SYS_ADMIN + CAP_NET_ADMIN, or the name is taken); :meth:`close` deletes it."""

    def __init__(self, name: str):
        self.name = name
        self._created = False
        if shutil.which("ip") is None:
            raise OSError("iproute2 (ip) is not installed")
        r = ip("netns", "add", name, check=False)
        if r.returncode != 0:
            raise OSError(f"cannot create network namespace {name}: {r.stderr.strip()}")
        self._created = True
        try:
            try:
                self.run(_ipv6_off)
            except OSError:
                pass    # a kernel without IPv6 has no chatter to silence
            ip("-n", name, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise

    def run(self, fn):
        """``fn()`` run inside the namespace (on a short-lived thread); its result."""
        return _in_netns(self.name, fn)

    def socket(self, *args) -> socket.socket:
        """A socket created inside the namespace (it stays there whichever thread uses it)."""
        return self.run(lambda: socket.socket(*args))

    def close(self) -> None:
        """Delete the namespace (and whatever is left in it)."""
        if self._created:
            self._created = False
            ip("netns", "del", self.name, check=False)

    def __enter__(self) -> "NetNamespace":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
