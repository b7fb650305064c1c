"""The ``hvkvm`` command.

Exit codes: 0 the guest passed (done(0)) or the command succeeded, 1 the guest failed, asserted or
crashed, 2 bad usage or input (one line on stderr, never a traceback), 3 KVM unavailable,
124 the guest ran past ``--timeout``.
"""

from __future__ import annotations

import argparse
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
    run.add_argument("--disk", action="append", default=[],
                     metavar="FILE[,ro][,direct][,bus=vmbus|virtio|ata|mmio]",
                     help="offer a raw disk image: on a synthetic SCSI controller (storvsc, "
                          "bus=vmbus, the default; one controller each), as virtio-blk on "
                          "virtio-mmio (bus=virtio, C data plane; up to 8, placed and announced "
                          "on the command line as QEMU's microvm does), as the ATA PIO disk "
                          "(bus=ata, one) or as the doorbell MMIO disk (bus=mmio, one); repeat "
                          "for more disks")
    run.add_argument("--net", action="append", default=[],
                     metavar="tap=NAME[,mac=MAC][,netns=NS][,vnet_hdr]",
                     help="offer a synthetic NIC (netvsc) on TAP device NAME, opened or created "
                          "(in network namespace NS if given); repeat for more NICs")
    run.add_argument("--dataplane", choices=["c", "python"], default="c",
                     help="the storage and network data plane (default c)")
    run.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    run.add_argument("--stats", action="store_true",
                     help="print exit counts and the host service-time histogram per vCPU")
    run.add_argument("--snapshot-out", metavar="FILE",
                     help="write a snapshot of the partition to FILE (see --snapshot-at)")
    run.add_argument("--snapshot-at", metavar="STAGE|done", default="done",
                     help="when to take --snapshot-out: at the guest's SYNC STAGE (the run goes "
                          "on) or when the run ends (default: done)")
    run.add_argument("--restore", metavar="FILE",
                     help="start from a snapshot file instead of booting (same image, memory "
                          "size and vCPU count)")
    run.add_argument("--gdb", metavar="[HOST:]PORT",
                     help="serve the GDB remote protocol on HOST:PORT (default host 127.0.0.1)")
    run.add_argument("--gdb-wait", action="store_true",
                     help="with --gdb: hold the guest before its first instruction until gdb "
                          "continues")

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
    tst.add_argument("--reset", choices=["boot", "snapshot"], default="boot",
                     help="start each test from a fresh boot (default) or from a snapshot taken "
                          "once at the runtime's test dispatch")

    bench = sub.add_parser("bench", help="measure I/O paths; prints a table and writes JSON")
    bench_sub = bench.add_subparsers(dest="suite", metavar="SUITE", parser_class=_Parser,
                                     required=True)
    for name, what in (("exits", "what one exit costs, Python and C exit loops"),
                       ("vmbus", "VMBus echo and one-way, C and Python data planes"),
                       ("storage", "disk_bench over every storage path and QEMU"),
                       ("net", "UDP echo latency and one-way pps over every network path"),
                       ("boot", "snapshot restore, start-up, teardown, QEMU boot"),
                       ("ceilings", "memcpy bandwidth and the zero-exit ping-pong"),
                       ("all", "every suite in one run, with the goals")):
        sp = bench_sub.add_parser(name, help=what)
        sp.add_argument("--json", metavar="FILE", help="also write the report as JSON to FILE")
        sp.add_argument("--quick", action="store_true", help="short runs (a smoke test, noisy)")
        sp.add_argument("--repeat", type=_positive_int, metavar="N", default=None,
                        help="runs per case (samples for the spread; default per suite)")
    cmp_ = bench_sub.add_parser("compare", help="B against A: ratios, regressions beyond noise")
    cmp_.add_argument("a", metavar="A.json")
    cmp_.add_argument("b", metavar="B.json")
    cmp_.add_argument("--json", metavar="FILE", help="also write the comparison as JSON")
    cmp_.add_argument("--fail-on-regression", action="store_true",
                      help="exit 1 when a measure regressed beyond the runs' noise")
    plot = bench_sub.add_parser("plot", help="PNG charts of a report (needs matplotlib)")
    plot.add_argument("file", metavar="FILE.json")
    plot.add_argument("--out", metavar="DIR", required=True, help="directory for the PNGs")

    demo = sub.add_parser("demo", help="every VSC against its VSP in one partition, narrated")
    demo.add_argument("--no-net", action="store_true", help="skip the network part")
    demo.add_argument("--timeout", type=_seconds, default=120.0, help="guest limit, seconds")

    doc = sub.add_parser("doctor", help="check /dev/kvm and say which kind of KVM this is")
    doc.add_argument("--json", action="store_true", help="print the report as JSON")
    doc.add_argument("--no-probe", action="store_true", help="skip the CPL0/CPL3 timing probe")
    doc.add_argument("--ci", action="store_true",
                     help="one line and an exit code to branch on: 0 ok, 3 no /dev/kvm, "
                          "4 no permission, 5 a required capability missing, 1 other")
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


DISK_BUSES = ("vmbus", "virtio", "ata", "mmio")


def _disk_bus(spec: str) -> tuple[str, str]:
    """``FILE[,opts][,bus=B]`` -> (the spec without ``bus=``, B); UsageError for an unknown bus."""
    parts = spec.split(",")
    bus = "vmbus"
    keep = [parts[0]]
    for o in parts[1:]:
        if o.startswith("bus="):
            bus = o[4:]
            if bus not in DISK_BUSES:
                raise UsageError(f"--disk {spec!r}: unknown bus {bus!r} "
                                 f"(use {', '.join(DISK_BUSES)})")
        else:
            keep.append(o)
    return ",".join(keep), bus


def _open_disks(specs: list[str], buses: list | None = None) -> list:
    """Open every ``--disk FILE[,ro][,direct][,bus=B]``; UsageError (one line) on the first bad
    one. ``buses``, when given, receives each disk's bus."""
    if not specs:
        return []  # the VSP modules are imported only when a disk asks for one
    from .vsp.disk import Disk, DiskError, parse_disk_spec
    disks = []
    try:
        for spec in specs:
            rest, bus = _disk_bus(spec)
            path, readonly, direct = parse_disk_spec(rest)
            disks.append(Disk(path, readonly=readonly, direct=direct))
            if buses is not None:
                buses.append(bus)
    except (DiskError, UsageError) as e:
        for d in disks:
            d.close()
        raise UsageError(str(e)) from None
    return disks


def _bus_devices(disks: list, buses: list[str]) -> tuple[list, list[str]]:
    """PartitionConfig devices and guest command-line keys of the disks not on the VMBus."""
    if all(bus == "vmbus" for bus in buses):
        return [], []
    from .vsp import ata, mmioblk, virtio_blk
    devices, keys, kinds = [], [], set()
    n_virtio = 0
    for d, bus in zip(disks, buses):
        if bus == "vmbus":
            continue
        if bus == "virtio":
            if n_virtio >= virtio_blk.VIRTIO_MMIO_SLOTS:
                raise UsageError(f"at most {virtio_blk.VIRTIO_MMIO_SLOTS} virtio disks")
            kw, k = virtio_blk.devices_for(d, "c", index=n_virtio)
            n_virtio += 1
        elif bus in kinds:
            raise UsageError(f"only one disk can be on bus={bus}")
        elif bus == "ata":
            kw, k = ata.devices_for(d, "python")
        else:
            kw, k = mmioblk.devices_for(d, "python")
        kinds.add(bus)
        devices += kw["devices"]
        keys += [x for x in k if x not in keys]
    return devices, keys


def _open_taps(specs: list[str]) -> list:
    """Open (or create) the TAP device of every ``--net``; UsageError (one line) on the first
    bad one. Returns [(NetSpec, TapDevice)]."""
    if not specs:
        return []
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
    if not taps:
        return []
    import uuid

    from .vmbus.wire import HV_NIC_GUID
    from .vsp.netvsc import NetvscVsp
    return [NetvscVsp(tap, mac=spec.mac, plane=plane,
                      instance_id=uuid.uuid5(HV_NIC_GUID, f"nic{i}:{spec.tap}"))
            for i, (spec, tap) in enumerate(taps)]


def _storage_vsps(disks: list, plane: str) -> list:
    """One storvsc controller per disk (LUN 0), with stable instance ids by position."""
    if not disks:
        return []
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
    snap_plan = _snapshot_plan(args)
    if args.cmdline is not None:
        cmdline = args.cmdline
    else:
        # A built-in image is called by its name; a file by its base name. Guests that start
        # their APs learn how many to expect from cpus=N.
        name = args.image if not os.path.exists(args.image) else \
            os.path.splitext(os.path.basename(args.image))[0]
        cmdline = name + (f" cpus={args.vcpus}" if args.vcpus > 1 else "")
    buses: list[str] = []
    disks = _open_disks(args.disk, buses)
    try:
        bus_devices, bus_keys = _bus_devices(disks, buses)
    except (UsageError, ValueError, OSError) as e:
        for d in disks:
            d.close()
        raise UsageError(str(e)) from None
    # Where the guest finds its virtio-mmio devices (as QEMU's microvm appends it); and, with the
    # image's default command line, which driver to use when every disk is on one other bus.
    kinds = set(buses)
    for key in bus_keys:
        if key.startswith("dev="):
            if args.cmdline is None and len(kinds) == 1:
                cmdline += " " + key
        else:
            cmdline += " " + key
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
    vsps += _storage_vsps([d for d, b in zip(disks, buses) if b == "vmbus"], args.dataplane)
    vsps += _net_vsps(taps, args.dataplane)
    cfg = PartitionConfig(image=path, memory=args.memory, vcpus=args.vcpus, cmdline=cmdline,
                          serial_out=out, timeout=args.timeout, strict_io=args.strict_io,
                          serial_stdin=sys.stdin.isatty() and not args.json, vsps=vsps,
                          devices=bus_devices)
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
            snap_errors = _arm_snapshots(part, args, snap_plan)
            stub = _start_gdb(part, args)
            try:
                result = part.run()
            finally:
                if stub is not None:
                    stub.close()
            _finish_snapshots(part, args, snap_plan, snap_errors)
    finally:
        if close_out:
            out.close()
        for d in disks:
            d.close()
        for _, t in taps:
            t.close()
    if args.json:
        import json
        print(json.dumps(result.to_json(), indent=2))
    if result.detail and not result.passed:
        print(result.detail, file=sys.stderr)
    print(result.summary_line(), file=sys.stderr)
    if args.stats:
        from .partition.metrics import format_table
        print(format_table(result.exit_metrics), file=sys.stderr)
    for e in snap_errors:
        print(f"hvkvm: error: {e}", file=sys.stderr)
    return result.exit_code if not snap_errors else max(result.exit_code, 1)


def _snapshot_plan(args):
    """Check the snapshot and gdb options; load --restore's file. (stage|"done"|None, snapshot)."""
    stage = None
    if args.snapshot_out:
        if args.snapshot_at == "done":
            stage = "done"
        else:
            try:
                stage = int(args.snapshot_at, 0)
            except ValueError:
                raise UsageError(f"--snapshot-at takes a SYNC stage number or 'done', not "
                                 f"{args.snapshot_at!r}") from None
        try:
            open(args.snapshot_out, "ab").close()
        except OSError as e:
            raise UsageError(f"cannot write {args.snapshot_out}: {e.strerror}") from None
    elif args.snapshot_at != "done":
        raise UsageError("--snapshot-at needs --snapshot-out FILE")
    if (args.snapshot_out or args.restore) and (args.echo or args.disk or args.net):
        raise UsageError("snapshots cover the vCPUs, irqchip, UART and RAM, not disks, NICs or "
                         "VMBus devices: drop --echo/--disk/--net")
    if args.gdb_wait and not args.gdb:
        raise UsageError("--gdb-wait needs --gdb [HOST:]PORT")
    if args.gdb:
        _gdb_address(args.gdb)
    snap = None
    if args.restore:
        from .partition.snapshot import Snapshot, SnapshotError
        try:
            snap = Snapshot.load(args.restore)
        except SnapshotError as e:
            raise UsageError(str(e)) from None
    return stage, snap


def _gdb_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]") if sep else "127.0.0.1"
    try:
        value = int(port)
    except ValueError:
        raise UsageError(f"--gdb takes [HOST:]PORT, not {text!r}") from None
    if not 0 <= value <= 65535:
        raise UsageError(f"--gdb port out of range: {value}")
    return host or "127.0.0.1", value


def _arm_snapshots(part, args, plan) -> list[str]:
    """Restore --restore's snapshot; hook a SYNC-stage --snapshot-out. Returns the error list
    the hook fills (reported after the run)."""
    stage, snap = plan
    errors = _Errors()
    if snap is None and not isinstance(stage, int):
        return errors
    from .partition.snapshot import SnapshotError
    if snap is not None:
        try:
            part.restore(snap)
        except SnapshotError as e:
            raise UsageError(f"{args.restore}: {e}") from None
        print(f"hvkvm: restored {args.restore} (vCPU0 at RIP {snap.vcpus[0].rip:#x} "
              f"<{part.symbolize(snap.vcpus[0].rip)}>)", file=sys.stderr)
    if isinstance(stage, int):
        done = []
        previous = part.config.on_sync

        def on_sync(index, uc):
            if uc.args[0] == stage and not done:
                done.append(True)
                try:
                    n = part.snapshot().save(args.snapshot_out)
                    print(f"hvkvm: snapshot at SYNC {stage} written to {args.snapshot_out} "
                          f"({n} bytes)", file=sys.stderr)
                except (SnapshotError, OSError) as e:
                    errors.append(f"snapshot at SYNC {stage}: {e}")
            return previous(index, uc) if previous is not None else None

        part.config.on_sync = on_sync

        def check_taken():
            if not done:
                errors.append(f"the guest never sent SYNC {stage}: no snapshot written to "
                              f"{args.snapshot_out}")

        errors.check_taken = check_taken
    return errors


def _finish_snapshots(part, args, plan, errors: list[str]) -> None:
    stage, _ = plan
    if stage == "done":
        from .partition.snapshot import SnapshotError
        try:
            n = part.snapshot().save(args.snapshot_out)
            print(f"hvkvm: snapshot at the end of the run written to {args.snapshot_out} "
                  f"({n} bytes)", file=sys.stderr)
        except (SnapshotError, OSError) as e:
            errors.append(f"snapshot at the end of the run: {e}")
    elif isinstance(stage, int):
        errors.check_taken()


class _Errors(list):
    """Errors found while the guest ran, reported after its result."""

    def check_taken(self) -> None:
        """Replaced when a SYNC-stage snapshot is armed."""


def _start_gdb(part, args):
    if not args.gdb:
        return None
    from .gdbstub import GdbStub
    host, port = _gdb_address(args.gdb)
    try:
        stub = GdbStub(part, host, port, wait=args.gdb_wait)
    except OSError as e:
        raise UsageError(f"--gdb {args.gdb}: cannot listen: {e.strerror}") from None
    stub.start()
    h, p = stub.address
    where = "loopback only" if h in ("127.0.0.1", "::1") else "NOT loopback: anyone who can " \
        "reach it controls the guest"
    print(f"hvkvm: gdb stub on {h}:{p} ({where}); connect with: gdb -ex 'target remote "
          f"{h}:{p}' {part.config.image}" + (" (the guest waits for gdb)" if args.gdb_wait
                                             else ""), file=sys.stderr)
    return stub


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
    fast = None
    if args.reset == "snapshot" and tests:
        from .guesttests import FastReset
        fast = FastReset(tests[0].image)
    try:
        for t in tests:
            r = run_test(t, timeout=args.timeout, fast_reset=fast)
            results.append((t, r))
            if not args.tap:
                o = outcome(t, r)
                print(f"{o.upper():5} {t.name} ({r.wall_ms:.0f} ms)")
                if o in ("fail", "xpass"):
                    print(describe_failure(t, r))
    finally:
        if fast is not None:
            fast.close()
    if fast is not None and fast.unavailable:
        print(f"hvkvm: --reset snapshot fell back to booting: {fast.unavailable}",
              file=sys.stderr)
    if args.tap:
        print(tap_report(results))
    bad = [t for t, r in results if outcome(t, r) in ("fail", "xpass")]
    if not args.tap:
        print(f"{len(results) - len(bad)} passed, {len(bad)} failed")
    return 1 if bad else 0


def cmd_bench(args) -> int:
    """``hvkvm bench SUITE``: run, print the table and the goals, write JSON; ``compare``;
    ``plot``."""
    from .bench import report
    from .bench.common import write_json
    if args.suite in ("compare", "plot"):
        try:
            if args.suite == "compare":
                return report.main_compare(args.a, args.b, args.fail_on_regression, args.json)
            return report.main_plot(args.file, args.out)
        except ValueError as e:
            raise UsageError(str(e)) from None
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
    argv = sys.argv[2:] if len(sys.argv) > 2 and sys.argv[1] == "bench" else [args.suite]
    doc = report.run_suites(args.suite, args.quick, args.repeat, argv)
    print(report.format_document(doc))
    write_json(args.json, doc)
    return 0


#: ``hvkvm doctor --ci`` exit codes (ci/README.md): 0 ok, 1 another problem, 3 no /dev/kvm,
#: 4 no permission on it, 5 a required KVM capability missing.
EXIT_CI_OTHER = 1
EXIT_CI_NO_PERMISSION = 4
EXIT_CI_MISSING_CAPABILITY = 5


def ci_verdict(rep) -> tuple[int, str]:
    """(exit code, one line with the fix) for ``hvkvm doctor --ci``."""
    if not rep.accessible:
        import errno
        err = 0
        try:
            os.close(os.open(rep.device, os.O_RDWR | os.O_CLOEXEC))
        except OSError as e:
            err = e.errno
        if err == errno.ENOENT:
            code, what = EXIT_NO_KVM, "no KVM device"
        elif err in (errno.EACCES, errno.EPERM):
            code, what = EXIT_CI_NO_PERMISSION, "no permission"
        else:
            code, what = EXIT_CI_OTHER, "KVM unusable"
        return code, f"hvkvm doctor: {what}: {rep.problem}; fix: {rep.fix}"
    if rep.missing_required:
        return EXIT_CI_MISSING_CAPABILITY, (f"hvkvm doctor: missing required capability: "
                                            f"{', '.join(rep.missing_required)}; fix: {rep.fix}")
    if not rep.ok or rep.problem:
        return EXIT_CI_OTHER, f"hvkvm doctor: KVM unusable: {rep.problem}; fix: {rep.fix}"
    if rep.probe and not rep.probe.get("ok", True):
        return EXIT_CI_OTHER, (f"hvkvm doctor: a test guest did not run: {rep.probe.get('error')}"
                               f"; fix: check `dmesg | grep kvm` on the runner")
    return 0, f"hvkvm doctor: ok: {rep.backend} ({rep.device}, API {rep.api_version})"


def cmd_doctor(args) -> int:
    """``hvkvm doctor``: report on /dev/kvm and the backend."""
    import json

    from .doctor import diagnose, format_report
    rep = diagnose(probe=not args.no_probe)
    if args.ci:
        code, line = ci_verdict(rep)
        if args.json:
            print(json.dumps({"exit_code": code, "message": line, **rep.to_json()}, indent=2))
        print(line, file=sys.stdout if code == 0 else sys.stderr)
        return code
    if args.json:
        print(json.dumps(rep.to_json(), indent=2))
    else:
        print(format_report(rep))
    if not rep.accessible:
        return EXIT_NO_KVM
    return 0 if rep.ok else 1


def cmd_demo(args) -> int:
    """``hvkvm demo``: hvkvm/demo.py, imported only when asked for."""
    from .demo import cmd_demo as run
    return run(args)


def _service_handlers() -> dict:
    """``service``, ``vm`` and ``events`` (hvkvm.service; no FastAPI import here)."""
    from .service.cli import HANDLERS
    return HANDLERS


def _fast_exit(code: int) -> None:
    """End an ``hvkvm run`` process now: flush stdout and stderr and ``os._exit``.

    By then the partition has closed every fd and mapping it owned (and the serial file), so
    the interpreter's own teardown (freeing every object and module one by one: 20-70 ms here
    after a run, issue 6's start-up goal) has nothing left to release that the kernel does not
    release at exit anyway. Only for the command line (``main()`` without ``argv``); callers
    that run :func:`main` in-process get its return value as usual.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


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
                   "demo": cmd_demo,
                   **_service_handlers()}[args.command]
        code = handler(args)
        if argv is None and args.command == "run":
            _fast_exit(code)
        return code
    except UsageError as e:
        print(f"hvkvm: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("hvkvm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
