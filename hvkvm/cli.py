"""The ``hvkvm`` command.

Exit codes: 0 the guest passed (done(0)) or the command succeeded, 1 the guest failed, asserted or
crashed, 2 bad usage or input (one line on stderr, never a traceback), 3 KVM unavailable,
124 the guest ran past ``--timeout``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .partition.result import EXIT_NO_KVM, EXIT_USAGE


class UsageError(Exception):
    """Bad usage or input: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors and exit code 2 (argparse's multi-line usage dump is noise)."""

    def error(self, message: str):  # noqa: D401 - argparse API
        """Turn argparse's complaint into a :class:`UsageError` (one line, exit 2)."""
        raise UsageError(message)


def _positive_int(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _size(text: str) -> int:
    from .partition.config import parse_size
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    p = _Parser(prog="hvkvm", description="Hyper-V's architecture on Linux KVM: run tiny guest "
                                          "kernels as child partitions of a Python parent.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    run = sub.add_parser("run", help="boot an image in a new child partition")
    run.add_argument("image", metavar="IMAGE|NAME", help="an ELF file, or a built-in image name")
    run.add_argument("--memory", type=_size, default="64M", help="guest RAM (default 64M)")
    run.add_argument("--vcpus", type=_positive_int, default=1, help="vCPUs (default 1)")
    run.add_argument("--timeout", type=_seconds, default=None, help="wall-clock limit, seconds")
    run.add_argument("--cmdline", default=None, help="guest command line")
    run.add_argument("--serial", default="-", metavar="FILE|-",
                     help="where COM1 output goes (default stdout; stderr with --json)")
    run.add_argument("--echo", nargs="?", const="c", choices=["c", "python"], metavar="PLANE",
                     help="offer hvkvm's VMBus echo device (data plane c or python; default c)")
    run.add_argument("--strict-io", action="store_true",
                     help="an unmapped port or MMIO access stops the guest")
    run.add_argument("--disk", action="append", default=[], metavar="FILE[,ro][,direct]",
                     help="offer a raw disk image on a synthetic SCSI controller (storvsc); "
                          "repeat for more disks (one controller each)")
    run.add_argument("--net", action="append", default=[],
                     metavar="tap=NAME[,mac=MAC][,netns=NS][,vnet_hdr]",
                     help="offer a synthetic NIC (netvsc) on TAP device NAME, opened or created "
                          "(in network namespace NS if given); repeat for more NICs")
    run.add_argument("--dataplane", choices=["c", "python"], default="c",
                     help="the storage and network data plane (default c)")
    run.add_argument("--json", action="store_true", help="print the result as JSON on stdout")

    disk = sub.add_parser("disk", help="create raw disk images")
    disk_sub = disk.add_subparsers(dest="disk_command", metavar="ACTION", parser_class=_Parser,
                                   required=True)
    create = disk_sub.add_parser("create", help="create a sparse raw image FILE of SIZE bytes")
    create.add_argument("file", metavar="FILE")
    create.add_argument("size", metavar="SIZE", help="e.g. 64M, 10G (a multiple of 512 bytes)")

    img = sub.add_parser("images", help="list, build or locate the built-in guest images")
    img.add_argument("action", nargs="?", default="list", choices=["list", "build", "path"])
    img.add_argument("name", nargs="*", help="image names (build: default all; path: one)")
    img.add_argument("--force", action="store_true", help="rebuild even when cached")

    tst = sub.add_parser("test", help="run an image's guest tests (HV_TEST) without pytest")
    tst.add_argument("image", metavar="IMAGE|NAME")
    tst.add_argument("-k", dest="expr", metavar="EXPR", help="only tests matching EXPR (pytest -k)")
    tst.add_argument("--tap", action="store_true", help="TAP version 13 output")
    tst.add_argument("--timeout", type=_seconds, default=None, help="per-test limit, seconds")

    bench = sub.add_parser("bench", help="measure I/O paths; prints a table and writes JSON")
    bench.add_argument("suite", choices=["exits", "vmbus", "boot"], help="what to measure")
    bench.add_argument("--json", metavar="FILE", help="also write the report as JSON to FILE")
    bench.add_argument("--quick", action="store_true", help="short runs (a smoke test, noisy)")

    doc = sub.add_parser("doctor", help="check /dev/kvm and say which kind of KVM this is")
    doc.add_argument("--json", action="store_true", help="print the report as JSON")
    doc.add_argument("--no-probe", action="store_true", help="skip the CPL0/CPL3 timing probe")
    from .service.cli import add_parsers as _add_service_parsers
    _add_service_parsers(sub, _Parser, _positive_int, _size, _seconds)
    return p


def _open_serial(arg: str, json_mode: bool):
    if arg == "-":
        return (sys.stderr if json_mode else sys.stdout).buffer, False
    try:
        return open(arg, "wb"), True
    except OSError as e:
        raise UsageError(f"cannot open serial output {arg}: {e.strerror}") from None


def _open_disks(specs: list[str]) -> list:
    """Open every ``--disk FILE[,ro][,direct]``; UsageError (one line) on the first bad one."""
    from .vsp.disk import Disk, DiskError, parse_disk_spec
    disks = []
    try:
        for spec in specs:
            path, readonly, direct = parse_disk_spec(spec)
            disks.append(Disk(path, readonly=readonly, direct=direct))
    except DiskError as e:
        for d in disks:
            d.close()
        raise UsageError(str(e)) from None
    return disks


def _open_taps(specs: list[str]) -> list:
    """Open (or create) the TAP device of every ``--net``; UsageError (one line) on the first
    bad one. Returns [(NetSpec, TapDevice)]."""
    from .vsp.netvsc import NetError, TapDevice, parse_net_spec
    taps = []
    try:
        for spec in specs:
            ns = parse_net_spec(spec)
            taps.append((ns, TapDevice(ns.tap, netns=ns.netns, vnet_hdr=ns.vnet_hdr)))
    except NetError as e:
        for _, t in taps:
            t.close()
        raise UsageError(str(e)) from None
    return taps


def _net_vsps(taps: list, plane: str) -> list:
    """One netvsc NIC per TAP, with stable instance ids (and so MACs) by position."""
    import uuid

    from .vmbus.wire import HV_NIC_GUID
    from .vsp.netvsc import NetvscVsp
    return [NetvscVsp(tap, mac=spec.mac, plane=plane,
                      instance_id=uuid.uuid5(HV_NIC_GUID, f"nic{i}:{spec.tap}"))
            for i, (spec, tap) in enumerate(taps)]


def _storage_vsps(disks: list, plane: str) -> list:
    """One storvsc controller per disk (LUN 0), with stable instance ids by position."""
    import uuid

    from .vmbus.wire import HV_SCSI_GUID
    from .vsp.storvsc import StorvscVsp
    return [StorvscVsp(d, plane=plane, instance_id=uuid.uuid5(HV_SCSI_GUID, f"disk{i}"))
            for i, d in enumerate(disks)]


def cmd_run(args) -> int:
    """``hvkvm run``: boot, wait, summarize."""
    from .boot.elf import BadImage
    from .images import ImageError, resolve_image
    from .kvm.errors import KvmError, KvmUnavailable
    from .partition.config import PartitionConfig
    from .partition.partition import ChildPartition

    try:
        path = resolve_image(args.image)
    except ImageError as e:
        raise UsageError(str(e)) from None
    if args.cmdline is not None:
        cmdline = args.cmdline
    else:
        # A built-in image is called by its name; a file by its base name. Guests that start
        # their APs learn how many to expect from cpus=N.
        name = args.image if not os.path.exists(args.image) else \
            os.path.splitext(os.path.basename(args.image))[0]
        cmdline = name + (f" cpus={args.vcpus}" if args.vcpus > 1 else "")
    disks = _open_disks(args.disk)
    try:
        taps = _open_taps(args.net)
    except UsageError:
        for d in disks:
            d.close()
        raise
    try:
        out, close_out = _open_serial(args.serial, args.json)
    except UsageError:
        for d in disks:
            d.close()
        for _, t in taps:
            t.close()
        raise
    vsps = []
    if args.echo:
        from .vsp.echo import EchoVsp
        vsps.append(EchoVsp(plane=args.echo))
    vsps += _storage_vsps(disks, args.dataplane)
    vsps += _net_vsps(taps, args.dataplane)
    cfg = PartitionConfig(image=path, memory=args.memory, vcpus=args.vcpus, cmdline=cmdline,
                          serial_out=out, timeout=args.timeout, strict_io=args.strict_io,
                          serial_stdin=sys.stdin.isatty() and not args.json, vsps=vsps)
    try:
        try:
            cfg.validate()
        except ValueError as e:
            raise UsageError(str(e)) from None
        try:
            part = ChildPartition(cfg)
        except BadImage as e:
            raise UsageError(str(e)) from None
        except KvmUnavailable as e:
            print(f"hvkvm: KVM unavailable: {e} (run `hvkvm doctor`)", file=sys.stderr)
            return EXIT_NO_KVM
        except (ValueError, KvmError) as e:
            raise UsageError(str(e)) from None
        with part:
            result = part.run()
    finally:
        if close_out:
            out.close()
        for d in disks:
            d.close()
        for _, t in taps:
            t.close()
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    if result.detail and not result.passed:
        print(result.detail, file=sys.stderr)
    print(result.summary_line(), file=sys.stderr)
    return result.exit_code


def cmd_disk(args) -> int:
    """``hvkvm disk create FILE SIZE``: a new sparse raw image."""
    from .vsp.disk import DiskError, create_disk
    try:
        size = create_disk(args.file, args.size)
    except DiskError as e:
        raise UsageError(str(e)) from None
    print(f"{args.file}: {size} bytes ({size // 512} sectors), sparse")
    return 0


def cmd_images(args) -> int:
    """``hvkvm images``: list, build or locate built-in images."""
    from .images import ImageError, build_image, image_path, list_images
    try:
        if args.action == "list":
            for n in list_images():
                print(n)
        elif args.action == "build":
            for n in args.name or list_images():
                print(f"{n}: {build_image(n, force=args.force)}")
        else:
            if len(args.name) != 1:
                raise UsageError("images path takes exactly one image name")
            print(image_path(args.name[0]))
    except ImageError as e:
        raise UsageError(str(e)) from None
    return 0


def cmd_test(args) -> int:
    """``hvkvm test``: run each guest test in its own partition; exit 0 only if all are as
    expected (passes, and expected failures that fail)."""
    from .boot.elf import BadImage
    from .doctor import kvm_usable
    from .guesttests import describe_failure, discover, outcome, run_test, select, tap_report
    from .images import ImageError, resolve_image
    try:
        tests = select(discover(resolve_image(args.image)), args.expr)
    except (ImageError, BadImage, ValueError) as e:
        raise UsageError(str(e)) from None
    ok, why = kvm_usable()
    if not ok:
        print(f"hvkvm: KVM unavailable: {why}", file=sys.stderr)
        return EXIT_NO_KVM
    results = []
    for t in tests:
        r = run_test(t, timeout=args.timeout)
        results.append((t, r))
        if not args.tap:
            o = outcome(t, r)
            print(f"{o.upper():5} {t.name} ({r.wall_ms:.0f} ms)")
            if o in ("fail", "xpass"):
                print(describe_failure(t, r))
    if args.tap:
        print(tap_report(results))
    bad = [t for t, r in results if outcome(t, r) in ("fail", "xpass")]
    if not args.tap:
        print(f"{len(results) - len(bad)} passed, {len(bad)} failed")
    return 1 if bad else 0


def cmd_bench(args) -> int:
    """``hvkvm bench SUITE``: run, print the table, write JSON."""
    import importlib

    from .bench.common import describe_machine, write_json
    from .doctor import kvm_usable
    ok, why = kvm_usable()
    if not ok:
        print(f"hvkvm: KVM unavailable: {why}", file=sys.stderr)
        return EXIT_NO_KVM
    if args.json:
        try:
            open(args.json, "a").close()
        except OSError as e:
            raise UsageError(f"cannot write {args.json}: {e.strerror}") from None
    suite = importlib.import_module(f".bench.{args.suite}", __package__)
    machine = describe_machine()
    print(f"machine: {machine['cpu']}, {machine['cpus']} CPUs, backend {machine['backend']}, "
          f"kernel {machine['kernel']}")
    section = suite.run(quick=args.quick)
    print(suite.format_report(section))
    write_json(args.json, {"suite": args.suite, "machine": machine, "quick": args.quick,
                           **section})
    return 0


def cmd_doctor(args) -> int:
    """``hvkvm doctor``: report on /dev/kvm and the backend."""
    from .doctor import diagnose, format_report
    rep = diagnose(probe=not args.no_probe)
    if args.json:
        print(json.dumps(rep.to_json(), indent=2))
    else:
        print(format_report(rep))
    if not rep.accessible:
        return EXIT_NO_KVM
    return 0 if rep.ok else 1


def _service_handlers() -> dict:
    """``service``, ``vm`` and ``events`` (hvkvm.service; no FastAPI import here)."""
    from .service.cli import HANDLERS
    return HANDLERS


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hvkvm`` command; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        handler = {"run": cmd_run, "images": cmd_images, "doctor": cmd_doctor,
                   "bench": cmd_bench, "disk": cmd_disk, "test": cmd_test,
                   **_service_handlers()}[args.command]
        return handler(args)
    except UsageError as e:
        print(f"hvkvm: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("hvkvm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
