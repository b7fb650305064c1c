"""Real child partitions running raw code in each CPU mode: every exit outcome the loop decodes."""

from __future__ import annotations

import pytest

from asm import assemble
from hvkvm.partition.config import DeviceSpec, PartitionConfig
from hvkvm.partition.ucall import UCALL_ASSERT, UCALL_DONE, UCALL_LOG, encode

pytestmark = pytest.mark.kvm

CODE = 0x10000
UCALL = 0x20000
UCALL2 = 0x21000
SCRATCH = 0x500


def ucall_out(mode: str, gpa: int) -> str:
    """Assembly for `out` of a ucall GPA to port 0xe8 in ``mode``."""
    return f"mov ${gpa:#x}, %eax\nmov $0xe8, %dx\nout %eax, %dx\n"


def run_raw(make_partition, mode, source, *, ucalls=(), timeout=10.0, **kw):
    code = assemble(source, mode, CODE)
    cfg = PartitionConfig(raw=code, raw_gpa=CODE, raw_mode=mode, timeout=timeout, **kw)
    p = make_partition(cfg)
    for gpa, raw in ucalls:
        p.memory.write(gpa, raw)
    return p, p.run()


@pytest.mark.parametrize("mode", ["real", "protected", "long"])
def test_guest_reports_done_zero_from_each_cpu_mode(make_partition, mode):
    p, r = run_raw(make_partition, mode, ucall_out(mode, UCALL) + "1: jmp 1b",
                   ucalls=[(UCALL, encode(UCALL_DONE, (0,)))])
    assert r.status == "pass", r.reason
    assert r.exit_code == 0
    assert r.exit_totals()["io"]["ring0"] == 1


def test_done_with_nonzero_code_is_a_failure_with_exit_code_1(make_partition):
    _, r = run_raw(make_partition, "long", ucall_out("long", UCALL) + "1: jmp 1b",
                   ucalls=[(UCALL, encode(UCALL_DONE, (7,)))])
    assert (r.status, r.guest_code, r.exit_code) == ("fail", 7, 1)


def test_guest_assert_reports_file_line_and_message(make_partition):
    _, r = run_raw(make_partition, "long", ucall_out("long", UCALL) + "1: jmp 1b",
                   ucalls=[(UCALL, encode(UCALL_ASSERT, (1, 2), file="guest/x.c", line=42,
                                          msg="x == y"))])
    assert r.status == "assert" and r.exit_code == 1
    assert "guest/x.c:42: x == y" in r.reason
    assert (r.assert_file, r.assert_line) == ("guest/x.c", 42)


def test_log_ucall_is_collected_and_the_guest_continues(make_partition):
    src = ucall_out("long", UCALL) + ucall_out("long", UCALL2) + "1: jmp 1b"
    _, r = run_raw(make_partition, "long", src,
                   ucalls=[(UCALL, encode(UCALL_LOG, msg="hello log")),
                           (UCALL2, encode(UCALL_DONE, (0,)))])
    assert r.passed and r.logs == ["hello log"]


def test_ucall_pointing_outside_ram_is_a_guest_error_not_a_host_access(make_partition):
    _, r = run_raw(make_partition, "long", ucall_out("long", 0xBFFF_F000) + "1: jmp 1b",
                   memory=4 << 20)
    assert r.status == "guest-error" and "outside guest RAM" in r.reason


def test_ucall_with_bad_magic_is_a_guest_error(make_partition):
    _, r = run_raw(make_partition, "long", ucall_out("long", UCALL) + "1: jmp 1b",
                   ucalls=[(UCALL, encode(UCALL_DONE, (0,), magic=0x1234))])
    assert r.status == "guest-error" and "magic" in r.reason


def test_triple_fault_is_a_crash_with_registers_and_rip(make_partition):
    # No IDT (limit 0): #UD escalates to a triple fault, which KVM reports as SHUTDOWN.
    src = "mov $0x1234, %rax\nnop\nud2\n"
    p, r = run_raw(make_partition, "long", src)
    assert r.status == "crash" and r.exit_code == 1, r.reason
    assert "triple fault" in r.reason
    assert r.registers["rax"] == 0x1234
    assert "RAX=0000000000001234" in r.detail


def test_watchdog_stops_a_looping_guest_and_says_where(make_partition):
    src = "nop\nspin: jmp spin\n"
    _, r = run_raw(make_partition, "long", src, timeout=0.5)
    assert r.status == "timeout" and r.exit_code == 124
    assert r.vcpu_state[0]["rip"] == CODE + 1
    assert f"{CODE + 1:#x}" in r.reason


def test_hlt_with_interrupts_off_is_reported_as_stopped(make_partition):
    _, r = run_raw(make_partition, "long", "cli\nhlt\n", stall_probe=0.1)
    assert r.status == "stopped" and r.exit_code == 1
    assert "halted with interrupts off" in r.reason


def test_unmapped_port_reads_all_ones_and_is_counted(make_partition):
    src = (f"mov $0x5a0, %dx\nin %dx, %eax\nmov %eax, {SCRATCH:#x}\n"
           "out %eax, %dx\n" + ucall_out("long", UCALL) + "1: jmp 1b")
    p, r = run_raw(make_partition, "long", src, ucalls=[(UCALL, encode(UCALL_DONE, (0,)))])
    assert r.passed
    assert p.memory.read_u32(SCRATCH) == 0xFFFF_FFFF
    assert p.pio_bus.unmapped_reads == 1 and p.pio_bus.unmapped_writes == 1


def test_unmapped_mmio_reads_all_ones_and_writes_are_dropped(make_partition):
    src = ("movabs $0xd0000000, %rbx\nmov (%rbx), %eax\n"
           f"mov %eax, {SCRATCH:#x}\nmovl $5, (%rbx)\n" + ucall_out("long", UCALL) + "1: jmp 1b")
    p, r = run_raw(make_partition, "long", src, ucalls=[(UCALL, encode(UCALL_DONE, (0,)))])
    assert r.passed, r.reason
    assert p.memory.read_u32(SCRATCH) == 0xFFFF_FFFF
    assert p.mmio_bus.unmapped_reads == 1 and p.mmio_bus.unmapped_writes == 1
    assert r.exit_totals()["mmio"]["ring0"] == 2


def test_strict_io_turns_an_unmapped_access_into_a_guest_error(make_partition):
    src = "mov $0x5a0, %dx\nin %dx, %al\n" + ucall_out("long", UCALL) + "1: jmp 1b"
    _, r = run_raw(make_partition, "long", src, strict_io=True,
                   ucalls=[(UCALL, encode(UCALL_DONE, (0,)))])
    assert r.status == "guest-error" and "0x5a0" in r.reason


class Counter:
    """A PIO device returning 0x10, 0x11, ... and recording writes."""

    def __init__(self):
        self.next = 0x10
        self.written = bytearray()
        self.offsets = []

    def read(self, offset, data):
        self.offsets.append(offset)
        for i in range(len(data)):
            data[i] = self.next & 0xFF
            self.next += 1

    def write(self, offset, data):
        self.offsets.append(offset)
        self.written += bytes(data)


def test_string_io_rep_insb_and_rep_outsb_move_every_byte(make_partition):
    dev = Counter()
    msg = b"string I/O works"
    src = (f"cld\nmov $0x5a0, %dx\nmov ${SCRATCH:#x}, %edi\nmov $16, %ecx\nrep insb\n"
           f"mov $msg, %esi\nmov ${len(msg)}, %ecx\nrep outsb\n"
           + ucall_out("long", UCALL) + "1: jmp 1b\nmsg: .ascii \"" + msg.decode() + "\"\n")
    p, r = run_raw(make_partition, "long", src, ucalls=[(UCALL, encode(UCALL_DONE, (0,)))],
                   devices=[DeviceSpec("pio", 0x5A0, 1, dev)])
    assert r.passed, r.reason
    assert p.memory.read(SCRATCH, 16) == bytes(range(0x10, 0x20))
    assert bytes(dev.written) == msg
    assert set(dev.offsets) == {0}


def test_uart_output_reaches_the_sink_and_the_capture(make_partition, tmp_path):
    out = open(tmp_path / "serial.txt", "wb")
    src = "mov $0x3f8, %dx\nmov $'o', %al\nout %al, %dx\nmov $'k', %al\nout %al, %dx\n" \
          "mov $10, %al\nout %al, %dx\n" + ucall_out("real", UCALL) + "1: jmp 1b"
    _, r = run_raw(make_partition, "real", src, serial_out=out,
                   ucalls=[(UCALL, encode(UCALL_DONE, (0,)))])
    out.close()
    assert r.passed and r.serial == b"ok\n"
    assert (tmp_path / "serial.txt").read_bytes() == b"ok\n"


def test_exit_counts_say_which_ring_the_exits_came_from(make_partition):
    # Drop to ring 3 with iretq (host tables made user-accessible), exit there through MMIO.
    from hvkvm.boot.cpu import SEL_USER_CODE64, SEL_USER_DATA, write_long_mode_tables
    src = (f"push ${SEL_USER_DATA}\npush $0x8f000\npush $2\npush ${SEL_USER_CODE64}\n"
           "movabs $user, %rax\npush %rax\niretq\n"
           "user: movabs $0xd0000000, %rbx\nmovl $1, (%rbx)\nmovl $1, (%rbx)\n1: jmp 1b\n")
    code = assemble(src, "long", CODE)
    stops = []

    class Stopper:
        def read(self, offset, data):
            pass

        def write(self, offset, data):
            stops.append(1)
            if len(stops) == 2:
                part.request_stop("two ring-3 writes seen")

    part = make_partition(PartitionConfig(raw=code, raw_gpa=CODE, raw_mode="long", timeout=10,
                                          devices=[DeviceSpec("mmio", 0xD000_0000, 4096,
                                                              Stopper())]))
    write_long_mode_tables(part.memory, user=True)
    r = part.run()
    assert r.passed, r.reason
    assert r.exit_totals()["mmio"] == {"ring0": 0, "ring3": 2}


def test_handlers_set_guest_registers_through_sync_regs(make_partition):
    from hvkvm.partition.partition import current_vcpu_thread

    class RegDevice:
        """Reading port 0x5a0 also sets RBX to RCX * 2 for the guest (a hypercall in miniature)."""

        def read(self, offset, data):
            t = current_vcpu_thread()
            t.set_regs(rbx=t.get_reg("rcx") * 2)
            data[:] = bytes(len(data))

        def write(self, offset, data):
            pass

    src = (f"mov $21, %rcx\nxor %ebx, %ebx\nmov $0x5a0, %dx\nin %dx, %al\nmov %rbx, {SCRATCH:#x}\n"
           + ucall_out("long", UCALL) + "1: jmp 1b")
    p, r = run_raw(make_partition, "long", src, ucalls=[(UCALL, encode(UCALL_DONE, (0,)))],
                   devices=[DeviceSpec("pio", 0x5A0, 1, RegDevice())])
    assert r.passed, r.reason
    assert p.memory.read_u64(SCRATCH) == 42
