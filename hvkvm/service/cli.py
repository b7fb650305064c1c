"""``hvkvm service``, ``hvkvm vm ...`` and ``hvkvm events``: the daemon and thin API clients.

Exit codes (besides hvkvm's 0 and 2): 1 the service failed the request (5xx), 4 no service
listens on the socket, 5 the service (or its socket) refused this user.
"""

from __future__ import annotations

import os
import sys

EXIT_SERVICE_ERROR = 1
EXIT_USAGE = 2
EXIT_NO_SERVICE = 4
EXIT_DENIED = 5

VM_VERBS = ("create", "start", "pause", "resume", "stop", "kill", "delete", "list", "show",
            "console", "stats")


def add_parsers(sub, parser_class, positive_int, size, seconds) -> None:
    """Add ``service``, ``vm`` and ``events`` to hvkvm's subcommand parsers."""
    svc = sub.add_parser("service", help="run the VM Service (management API, event log, "
                                         "one VM Worker process per running partition)")
    svc.add_argument("--state-dir", metavar="DIR",
                     help="definitions, event log, workers (default $HVKVM_STATE_DIR or "
                          "~/.local/state/hvkvm)")
    svc.add_argument("--socket", metavar="PATH", help="API socket (default STATE_DIR/run/api.sock)")
    svc.add_argument("--on-exit", choices=["detach", "stop"], default="detach",
                     help="on SIGTERM, leave workers running for the next service (default) "
                          "or stop them")
    svc.add_argument("--events-max", type=positive_int, default=10_000, metavar="ROWS",
                     help="event log row cap (default 10000)")
    svc.add_argument("--events-max-age", default="30d", metavar="AGE",
                     help="drop events older than this (default 30d)")
    svc.add_argument("-v", "--verbose", action="store_true", help="log every event to stderr")

    common = parser_class(add_help=False)
    common.add_argument("--socket", metavar="PATH", help="the service's API socket")
    common.add_argument("--state-dir", metavar="DIR", help="find the socket in this state dir")
    common.add_argument("--json", action="store_true", help="print the API's JSON")

    vm = sub.add_parser("vm", help="manage partitions through the VM Service")
    vms = vm.add_subparsers(dest="vm_command", metavar="VERB", parser_class=parser_class,
                            required=True)
    c = vms.add_parser("create", parents=[common], help="define a partition")
    c.add_argument("name")
    c.add_argument("--image", required=True, metavar="IMAGE|NAME",
                   help="a built-in image name or an ELF file")
    c.add_argument("--vcpus", type=positive_int, default=1)
    c.add_argument("--memory", default="64M", help="guest RAM (default 64M)")
    c.add_argument("--cmdline", default=None, help="guest command line (default: image name)")
    c.add_argument("--disk", action="append", default=[], metavar="FILE[,ro][,direct]",
                   help="a raw disk on its own storvsc controller (repeatable)")
    c.add_argument("--nic", action="append", default=[],
                   metavar="tap=NAME[,mac=..][,netns=NS][,vnet_hdr]",
                   help="a synthetic NIC (netvsc) on a TAP device, as `hvkvm run --net` "
                        "(repeatable)")
    c.add_argument("--autostart", action="store_true", help="start with the service")
    for verb, helptext in (("start", "start (spawn its VM Worker process)"),
                           ("pause", "hold its vCPUs"), ("resume", "let it run again"),
                           ("kill", "kill its worker process"), ("delete", "remove it"),
                           ("show", "show definition and state"),
                           ("stats", "exit counts, CPU, I/O counters")):
        p = vms.add_parser(verb, parents=[common], help=helptext)
        p.add_argument("name")
        if verb == "start":
            p.add_argument("--no-wait", action="store_true", help="return while Starting")
            p.add_argument("--timeout", type=seconds, default=60.0,
                           help="how long to wait for Running (default 60)")
    s = vms.add_parser("stop", parents=[common], help="graceful stop, hard after --timeout")
    s.add_argument("name")
    s.add_argument("--timeout", type=seconds, default=30.0,
                   help="seconds a graceful shutdown may take (default 30)")
    s.add_argument("--no-wait", action="store_true", help="return while Stopping")
    vms.add_parser("list", parents=[common], help="list partitions")
    co = vms.add_parser("console", parents=[common], help="stream the serial output")
    co.add_argument("name")
    co.add_argument("--no-follow", action="store_true", help="print the recent output and exit")
    co.add_argument("--tail", type=int, default=65536, metavar="BYTES",
                    help="recent output to show first (default 65536)")
    co.add_argument("--input", metavar="TEXT", help="send TEXT to the guest's COM1 first "
                                                    "(\\n for a newline)")

    ev = sub.add_parser("events", parents=[common], help="query the VM Service's event log")
    ev.add_argument("--partition", metavar="NAME")
    ev.add_argument("--severity", choices=["debug", "info", "warning", "error", "critical"],
                    help="this severity or worse")
    ev.add_argument("--since", metavar="WHEN", help="10m, 2h, 1d, @EPOCH or ISO 8601")
    ev.add_argument("--until", metavar="WHEN")
    ev.add_argument("--source", metavar="SOURCE",
                    help="api, service, worker, guest, vsp, vmbus, hv")
    ev.add_argument("--limit", type=positive_int, default=100)


def _usage(message: str) -> int:
    """One line on stderr, exit 2 (raised exceptions would not reach ``python -m hvkvm.cli``'s
    handler: there ``hvkvm.cli`` is ``__main__``, a different UsageError class)."""
    print(f"hvkvm: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _client(args):
    from .client import Client, default_client_socket
    return Client(default_client_socket(getattr(args, "socket", None),
                                        getattr(args, "state_dir", None)))


def _fmt_mem(n: int) -> str:
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return str(n)


def _print_vm(vm: dict) -> None:
    print(f"{vm['name']}: {vm['state']}" + (f" ({vm['reason']})" if vm.get("reason") else ""))
    print(f"  image {vm['image']}, {vm['vcpus']} vCPU(s), {_fmt_mem(vm['memory'])} RAM"
          + (", autostart" if vm.get("autostart") else ""))
    if vm.get("cmdline") is not None:
        print(f"  cmdline: {vm['cmdline']}")
    for d in vm.get("disks") or []:
        flags = ",".join(f for f in ("readonly", "direct") if d.get(f))
        print(f"  disk {d['path']}" + (f" ({flags})" if flags else ""))
    for n in vm.get("nics") or []:
        print("  nic " + ",".join(f"{k}={v}" for k, v in n.items()))
    if vm.get("pid"):
        print(f"  worker pid {vm['pid']}")
    hb = vm.get("heartbeat")
    if hb:
        print(f"  last heartbeat {hb.get('age_s')} s ago")
    last = vm.get("last_result")
    if last:
        print(f"  last run: {last.get('status')}: {last.get('reason')}")


def _print_stats(st: dict) -> None:
    import json  # only when printing: not on `hvkvm run`'s start-up path
    print(f"{st['name']}: {st['state']}" + ("" if st.get("live") else " (last run)"))
    cpu = st.get("cpu")
    if cpu:
        print(f"  worker CPU {cpu['total_s']} s (user {cpu['user_s']}, system {cpu['system_s']})"
              + (f", RSS {st['rss_bytes'] >> 20} MiB" if st.get("rss_bytes") else "")
              + (f", up {st['uptime_s']} s" if st.get("uptime_s") is not None else ""))
    totals = st.get("exit_totals") or {}
    if totals:
        parts = [f"{k} {v['ring0'] + v['ring3']}" for k, v in sorted(totals.items())]
        print(f"  exits: {', '.join(parts)}")
    ser = st.get("serial")
    if ser:
        print(f"  serial: {ser['tx_bytes']} bytes out, {ser['rx_bytes']} in")
    for v in st.get("vsps") or []:
        print(f"  {v['class']}: {json.dumps(v.get('stats', v.get('error')))}")


def _print_event(e: dict) -> None:
    part = f"[{e['partition']}] " if e.get("partition") else ""
    print(f"{e['iso_time']}  {e['severity']:<8} {e['source']:<7} {part}{e['message']}")


def _nic(spec: str) -> dict:
    from ..vsp.netvsc import NetError, format_mac, parse_net_spec
    try:
        ns = parse_net_spec(spec)
    except NetError as e:
        raise ValueError(str(e)) from None
    out = {"tap": ns.tap}
    if ns.mac:
        out["mac"] = format_mac(ns.mac)
    if ns.netns:
        out["netns"] = ns.netns
    if ns.vnet_hdr:
        out["vnet_hdr"] = True
    return out


def cmd_vm(args) -> int:
    """``hvkvm vm VERB``."""
    import json  # only when printing: not on `hvkvm run`'s start-up path
    verb = args.vm_command
    c = _client(args)
    out = None
    if verb == "create":
        from ..vsp.disk import DiskError, parse_disk_spec
        disks = []
        try:
            for spec in args.disk:
                path, ro, direct = parse_disk_spec(spec)
                disks.append({"path": os.path.abspath(path), "readonly": ro, "direct": direct})
            nics = [_nic(n) for n in args.nic]
        except (DiskError, ValueError) as e:
            return _usage(str(e))
        image = args.image
        if os.path.sep in image or os.path.exists(image):
            image = os.path.abspath(image)
        out = c.create(name=args.name, image=image, vcpus=args.vcpus, memory=args.memory,
                       cmdline=args.cmdline, disks=disks, nics=nics, autostart=args.autostart)
    elif verb == "list":
        vms = c.list()
        if args.json:
            print(json.dumps(vms, indent=2))
            return 0
        print(f"{'NAME':<20} {'STATE':<9} {'VCPUS':>5} {'MEMORY':>7} {'PID':>8}  IMAGE")
        for v in vms:
            print(f"{v['name']:<20} {v['state']:<9} {v['vcpus']:>5} {_fmt_mem(v['memory']):>7} "
                  f"{v['pid'] or '-':>8}  {v['image']}")
        return 0
    elif verb == "show":
        out = c.show(args.name)
    elif verb == "start":
        out = c.start(args.name, wait=not args.no_wait, timeout=args.timeout)
    elif verb in ("pause", "resume", "kill"):
        out = getattr(c, verb)(args.name)
    elif verb == "stop":
        out = c.stop(args.name, timeout=args.timeout, wait=not args.no_wait)
    elif verb == "delete":
        c.delete(args.name)
        if args.json:
            print(json.dumps({"deleted": args.name}))
        else:
            print(f"{args.name}: deleted")
        return 0
    elif verb == "stats":
        st = c.stats(args.name)
        if args.json:
            print(json.dumps(st, indent=2))
        else:
            _print_stats(st)
        return 0
    elif verb == "console":
        return _console(c, args)
    if args.json:
        print(json.dumps(out, indent=2))
    elif verb in ("show", "create"):
        _print_vm(out)
    else:
        extra = ""
        if verb == "stop":
            extra = " (graceful)" if out.get("graceful") else " (hard stop)"
        print(f"{out['name']}: {out['state']}{extra}" +
              (f": {out['reason']}" if out.get("reason") and out["state"] != "Running" else ""))
    return 0


def _console(c, args) -> int:
    if args.input is not None:
        text = args.input.encode().decode("unicode_escape")
        c.call("POST", c.vm_path(args.name, "console/input"), {"data": text})
    resp = c.stream(c.vm_path(args.name, "console"),
                    {"follow": not args.no_follow, "tail": args.tail})
    out = sys.stdout.buffer
    try:
        while True:
            chunk = resp.read1(65536)
            if not chunk:
                break
            out.write(chunk)
            out.flush()
    except KeyboardInterrupt:
        pass
    finally:
        resp.close()
    return 0


def cmd_events(args) -> int:
    """``hvkvm events``."""
    import json  # only when printing: not on `hvkvm run`'s start-up path
    evs = _client(args).events(partition=args.partition, severity=args.severity,
                               since=args.since, until=args.until, source=args.source,
                               limit=args.limit)
    if args.json:
        print(json.dumps(evs, indent=2))
    else:
        for e in evs:
            _print_event(e)
    return 0


def cmd_service(args) -> int:
    """``hvkvm service``."""
    from .server import ServiceStartError, main_service
    from .store import parse_duration
    try:
        age = parse_duration(args.events_max_age)
    except ValueError as e:
        return _usage(f"--events-max-age: {e}")
    try:
        return main_service(args.state_dir, args.socket, args.on_exit, args.events_max, age,
                            args.verbose)
    except ServiceStartError as e:
        return _usage(str(e))
    except ImportError as e:
        print(f"hvkvm: error: the VM service needs fastapi and uvicorn ({e})", file=sys.stderr)
        return EXIT_SERVICE_ERROR


def _guard(fn):
    def run(args) -> int:
        from .client import AccessDenied, ApiError, ClientError, ServiceUnavailable
        try:
            return fn(args)
        except ServiceUnavailable as e:
            print(f"hvkvm: error: {e}", file=sys.stderr)
            return EXIT_NO_SERVICE
        except AccessDenied as e:
            print(f"hvkvm: error: {e}", file=sys.stderr)
            return EXIT_DENIED
        except ApiError as e:
            print(f"hvkvm: error: {e}", file=sys.stderr)
            return EXIT_USAGE if e.status < 500 else EXIT_SERVICE_ERROR
        except ClientError as e:
            print(f"hvkvm: error: {e}", file=sys.stderr)
            return EXIT_SERVICE_ERROR
    run.__doc__ = fn.__doc__
    return run


HANDLERS = {"service": cmd_service, "vm": _guard(cmd_vm), "events": _guard(cmd_events)}
