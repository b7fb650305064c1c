"""QEMU as the benchmark peer: one pinned configuration, printed in every report that uses it.

The peer is Debian's ``qemu-system-x86_64`` with KVM (a TCG run is not a fair peer), the
``microvm`` machine booting the same PVH guest image hvkvm boots. On kvm_pvm plain ``-cpu host``
aborts on MSR 0x10a, so the CPU is ``host,-arch-capabilities``. The guest's ``done(code)`` reaches
QEMU's isa-debug-exit at port 0xf4 (exit status ``code << 1 | 1``); its console is COM1 on stdio.
Devices: virtio-blk and virtio-net on virtio-mmio (microvm's transport; QEMU appends each device's
``virtio_mmio.device=`` to the kernel command line, which the guest driver parses).
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import time

#: The pinned machine: everything but the image, command line and devices.
BASE = ["-M", "microvm", "-enable-kvm", "-cpu", "host,-arch-capabilities", "-smp", "1",
        "-m", "256M", "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
        "-serial", "stdio", "-device", "isa-debug-exit,iobase=0xf4,iosize=1",
        "-global", "virtio-mmio.force-legacy=false"]
#: Exit status of QEMU when the guest called done(0).
EXIT_DONE_0 = (0 << 1) | 1


def binary() -> str | None:
    """Path of qemu-system-x86_64 (None when absent)."""
    return shutil.which("qemu-system-x86_64")


def unavailable() -> str | None:
    """Why QEMU cannot be the peer here (None: it can)."""
    if binary() is None:
        return "qemu-system-x86_64 is not installed (Debian: apt-get install qemu-system-x86)"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "/dev/kvm is not usable (a TCG run is not a fair peer)"
    return None


def blk_args(path: str, direct: bool) -> list[str]:
    """virtio-blk on ``path`` (raw): O_DIRECT (cache=none) where hvkvm's disk is O_DIRECT too,
    else the page cache (cache=writeback), I/O on QEMU's thread pool (aio=threads)."""
    cache = "none" if direct else "writeback"
    return ["-drive", f"id=d0,file={path},format=raw,if=none,cache={cache},aio=threads,"
                      f"discard=ignore",
            "-device", "virtio-blk-device,drive=d0,num-queues=1,queue-size=256,event_idx=on"]


def net_args(tap: str, mac: bytes | None = None) -> list[str]:
    """virtio-net on an existing TAP (no vhost: the peer is QEMU's own data plane; QEMU's
    default queue sizes, 256), with ``mac`` (6 bytes) as the device's MAC when given."""
    dev = "virtio-net-device,netdev=n0,event_idx=on"
    if mac is not None:
        dev += ",mac=" + ":".join(f"{b:02x}" for b in mac)
    return ["-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no,vhost=off",
            "-device", dev]


def command(image: str, cmdline: str, devices: list[str] | None = None) -> list[str]:
    """The full command line."""
    return [binary() or "qemu-system-x86_64", *BASE, "-kernel", str(image), "-append", cmdline,
            *(devices or [])]


def run(image: str, cmdline: str, devices: list[str] | None = None, timeout: float = 300,
        netns: str | None = None) -> dict:
    """Run QEMU to the guest's exit: status, console, wall seconds and QEMU's CPU seconds."""
    cmd = command(image, cmdline, devices)
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    t0 = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return {"status": "timeout", "returncode": None, "console": out.decode(errors="replace"),
                "stderr": err.decode(errors="replace"), "wall_s": time.perf_counter() - t0,
                "cpu_s": None, "command": cmd}
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    status = "pass" if proc.returncode == EXIT_DONE_0 else "fail"
    return {"status": status, "returncode": proc.returncode,
            "console": out.decode(errors="replace"), "stderr": err.decode(errors="replace"),
            "wall_s": wall, "cpu_s": cpu, "command": cmd}


def describe() -> dict:
    """The pinned configuration for the report."""
    from .common import qemu_version
    return {"binary": binary(), "version": qemu_version(), "machine": " ".join(BASE),
            "virtio_blk": " ".join(blk_args("FILE", False)) + "  (cache=none when hvkvm's disk "
                                                              "is O_DIRECT)",
            "virtio_net": " ".join(net_args("TAP"))}
