"""How a run of a child partition ended: :class:`RunResult` and the exit-code mapping."""

from __future__ import annotations

from .._record import Record, factory

EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_USAGE = 2
EXIT_NO_KVM = 3
EXIT_TIMEOUT = 124

#: status -> process exit code for ``hvkvm run``.
STATUS_EXIT_CODES = {
    "pass": EXIT_PASS,        # guest reported done(0)
    "fail": EXIT_FAIL,        # done(n != 0)
    "assert": EXIT_FAIL,      # a guest assertion failed
    "fault": EXIT_FAIL,       # an exception the guest reported (any ring)
    "crash": EXIT_FAIL,       # triple fault, failed entry, internal error, system event crash
    "stopped": EXIT_FAIL,     # every vCPU halted with interrupts off before done()
    "guest-error": EXIT_FAIL,  # the guest broke the protocol (bad ucall, hostile input)
    "host-error": EXIT_FAIL,  # a bug or failure on the host side while running
    "timeout": EXIT_TIMEOUT,  # the wall-clock watchdog stopped the guest
}


class GuestCrash(Exception):
    """Raised by :meth:`RunResult.raise_for_status` when a guest did not pass."""

    def __init__(self, result: "RunResult"):
        super().__init__(result.reason)
        self.result = result


class RunResult(Record):
    """The outcome of :meth:`ChildPartition.run`."""

    status: str
    reason: str
    detail: str = ""
    guest_code: int | None = None
    wall_ms: float = 0.0
    #: vCPU index -> exit reason name -> {"ring0": n, "ring3": n}
    exits: dict[int, dict[str, dict[str, int]]] = factory(dict)
    serial: bytes = b""
    logs: list[str] = factory(list)
    syncs: list[tuple[int, tuple[int, ...]]] = factory(list)
    #: Where each vCPU was when the run ended: index -> {"rip", "symbol", "ring", "state"}
    vcpu_state: dict[int, dict] = factory(dict)
    #: For faults and crashes: register name -> value.
    registers: dict[str, int] = factory(dict)
    symbol: str = ""
    #: Symbolized frames (innermost first) for asserts and faults.
    backtrace: list[str] = factory(list)
    assert_file: str = ""
    assert_line: int = 0
    #: Per-vCPU exit counters and host service-time histograms (:mod:`hvkvm.partition.metrics`).
    exit_metrics: dict = factory(dict)

    @property
    def exit_code(self) -> int:
        """The ``hvkvm run`` process exit code for this outcome."""
        return STATUS_EXIT_CODES.get(self.status, EXIT_FAIL)

    @property
    def passed(self) -> bool:
        """True when the guest reported done(0)."""
        return self.status == "pass"

    def raise_for_status(self) -> "RunResult":
        """Raise :class:`GuestCrash` unless the guest passed; return self otherwise."""
        if not self.passed:
            raise GuestCrash(self)
        return self

    def exit_totals(self) -> dict[str, dict[str, int]]:
        """Exit counts by reason and ring, summed over vCPUs."""
        total: dict[str, dict[str, int]] = {}
        for per in self.exits.values():
            for reason, rings in per.items():
                t = total.setdefault(reason, {"ring0": 0, "ring3": 0})
                for ring, n in rings.items():
                    t[ring] = t.get(ring, 0) + n
        return total

    def summary_line(self) -> str:
        """One line: result, wall time, exits by reason and ring."""
        parts = []
        for reason, rings in sorted(self.exit_totals().items()):
            n = rings.get("ring0", 0) + rings.get("ring3", 0)
            parts.append(f"{reason} {n} (r0 {rings.get('ring0', 0)}/r3 {rings.get('ring3', 0)})")
        exits = ", ".join(parts) if parts else "none"
        return f"hvkvm: {self.status}: {self.reason}; {self.wall_ms:.1f} ms; exits: {exits}"

    def to_json(self) -> dict:
        """A JSON-ready dict of the whole result."""
        return {
            "status": self.status,
            "exit_code": self.exit_code,
            "reason": self.reason,
            "detail": self.detail,
            "guest_code": self.guest_code,
            "wall_ms": round(self.wall_ms, 3),
            "exits": {str(k): v for k, v in self.exits.items()},
            "exit_totals": self.exit_totals(),
            "vcpus": {str(k): v for k, v in self.vcpu_state.items()},
            "registers": self.registers,
            "symbol": self.symbol,
            "backtrace": self.backtrace,
            "assert": {"file": self.assert_file, "line": self.assert_line} if self.assert_file else None,
            "logs": self.logs,
            "serial": self.serial.decode("utf-8", "replace"),
            "exit_metrics": self.exit_metrics,
        }
