"""The Hyper-V synthetic interface emulated in the parent, driven by real guests (raw long mode)."""

from __future__ import annotations

import os
import struct

import pytest

from asm import assemble
from hvkvm.hv import synic as hs
from hvkvm.partition.config import PartitionConfig
from hvkvm.partition.ucall import UCALL_DONE, UCALL_SYNC, encode

pytestmark = pytest.mark.kvm

CODE = 0x10000
UCALL_DONE_GPA = 0x20000
UCALL_SYNC_GPA = 0x21000
HYPERCALL_PAGE = 0x30000
INPUT = 0x31000
SIMP = 0x32000
SIEFP = 0x33000
OUT = 0x500   # results the guest stores for the host to check

DONE = f"mov ${UCALL_DONE_GPA:#x}, %eax\nmov $0xe8, %dx\nout %eax, %dx\n1: jmp 1b\n"
SYNC = f"mov ${UCALL_SYNC_GPA:#x}, %eax\nmov $0xe8, %dx\nout %eax, %dx\n"


def wrmsr(msr: int, value: int) -> str:
    return (f"mov ${msr:#x}, %ecx\nmov ${value & 0xFFFFFFFF:#x}, %eax\n"
            f"mov ${value >> 32:#x}, %edx\nwrmsr\n")


SETUP_HYPERCALL = wrmsr(hs.HV_X64_MSR_GUEST_OS_ID, 0x8100_0000_0000_0001) + \
    wrmsr(hs.HV_X64_MSR_HYPERCALL, HYPERCALL_PAGE | 1)


def hypercall(control: int, rdx: int, store: int) -> str:
    """Call the hypercall page and store RAX at ``store``."""
    return (f"mov ${control:#x}, %rcx\nmovabs ${rdx:#x}, %rdx\nxor %r8, %r8\n"
            f"mov ${HYPERCALL_PAGE:#x}, %rax\ncall *%rax\nmov %rax, {store:#x}\n")


def build(make_partition, source, *, on_sync=None, timeout=20):
    code = assemble(source, "long", CODE)
    cfg = PartitionConfig(raw=code, raw_gpa=CODE, raw_mode="long", timeout=timeout,
                          hyperv=True, on_sync=on_sync)
    p = make_partition(cfg)
    p.memory.write(UCALL_DONE_GPA, encode(UCALL_DONE, (0,)))
    p.memory.write(UCALL_SYNC_GPA, encode(UCALL_SYNC, (1,)))
    return p


def test_cpuid_presents_hyper_v_not_kvm(make_partition):
    src = ("mov $0x40000000, %eax\ncpuid\nmov %eax, 0x500\nmov %ebx, 0x504\nmov %ecx, 0x508\n"
           "mov %edx, 0x50c\nmov $0x40000001, %eax\ncpuid\nmov %eax, 0x510\n"
           "mov $0x40000003, %eax\ncpuid\nmov %eax, 0x514\nmov %ebx, 0x518\n" + DONE)
    p = build(make_partition, src)
    r = p.run()
    assert r.passed, r.reason
    m = p.memory
    assert m.read_u32(0x500) == 0x4000000A
    assert m.read(0x504, 12) == b"Microsoft Hv"
    assert m.read(0x510, 4) == b"Hv#1"
    assert m.read_u32(0x514) & (1 << 2 | 1 << 5 | 1 << 6) == (1 << 2 | 1 << 5 | 1 << 6)
    assert m.read_u32(0x518) & (1 << 4 | 1 << 5) == (1 << 4 | 1 << 5)


def test_synthetic_msrs_read_back_and_vp_index_is_the_vcpu(make_partition):
    src = (wrmsr(hs.HV_X64_MSR_GUEST_OS_ID, 0x1122334455667788) +
           f"mov ${hs.HV_X64_MSR_GUEST_OS_ID:#x}, %ecx\nrdmsr\nmov %eax, 0x500\nmov %edx, 0x504\n"
           f"mov ${hs.HV_X64_MSR_VP_INDEX:#x}, %ecx\nrdmsr\nmov %eax, 0x508\n"
           f"mov ${hs.HV_X64_MSR_SVERSION:#x}, %ecx\nrdmsr\nmov %eax, 0x50c\n"
           f"mov ${hs.HV_X64_MSR_TSC_FREQUENCY:#x}, %ecx\nrdmsr\nmov %eax, 0x510\n" + DONE)
    p = build(make_partition, src)
    r = p.run()
    assert r.passed, r.reason
    assert p.memory.read_u64(0x500) == 0x1122334455667788
    assert p.memory.read_u32(0x508) == 0
    assert p.memory.read_u32(0x50C) == 1
    assert r.exit_totals()["x86_wrmsr"]["ring0"] == 1


def test_unknown_synthetic_msr_raises_gp_in_the_guest(make_partition):
    # No IDT: the #GP escalates to a triple fault, at the rdmsr.
    src = "mov $0x400000f0, %ecx\nrdmsr\n" + DONE
    p = build(make_partition, src)
    r = p.run()
    assert r.status == "crash" and "triple fault" in r.reason
    assert r.registers["rip"] == CODE + 5


def test_hypercall_page_gets_the_port_io_stub(make_partition):
    p = build(make_partition, SETUP_HYPERCALL + DONE)
    r = p.run()
    assert r.passed
    assert p.memory.read(HYPERCALL_PAGE, len(hs.HYPERCALL_STUB)) == hs.HYPERCALL_STUB


def test_stub_bytes_match_their_assembly_source():
    assert assemble(hs._STUB_SOURCE, "long", 0) == hs.HYPERCALL_STUB


def test_post_message_reaches_the_handler_and_bad_inputs_get_statuses(make_partition):
    got = []
    payload = b"hello vmbus".ljust(16, b"\0")
    src = (SETUP_HYPERCALL +
           hypercall(hs.HVCALL_POST_MESSAGE, INPUT, 0x500) +          # good
           hypercall(hs.HVCALL_POST_MESSAGE, INPUT + 4, 0x508) +      # misaligned
           hypercall(hs.HVCALL_POST_MESSAGE, INPUT + 4032, 0x510) +   # straddles a page
           hypercall(hs.HVCALL_POST_MESSAGE, 0x7FFF_F000, 0x518) +    # outside RAM
           hypercall(hs.HVCALL_POST_MESSAGE, INPUT + 0x100, 0x520) +  # unknown connection
           hypercall(0x0099, 0, 0x528) +                              # unknown code
           hypercall(hs.HVCALL_POST_MESSAGE, INPUT + 0x200, 0x530) +  # payload too big
           DONE)
    p = build(make_partition, src)
    p.hv.register_post_handler(77, lambda vp, t, data: got.append((vp, t, data)) or 0)
    p.memory.write(INPUT, struct.pack("<IIII", 77, 0, 1, len(payload)) + payload)
    p.memory.write(INPUT + 0x100, struct.pack("<IIII", 78, 0, 1, 4) + b"abcd")
    p.memory.write(INPUT + 0x200, struct.pack("<IIII", 77, 0, 1, 241))
    r = p.run()
    assert r.passed, r.reason
    assert got == [(0, 1, payload)]
    rd = p.memory.read_u64
    assert rd(0x500) == hs.HV_STATUS_SUCCESS
    assert rd(0x508) == hs.HV_STATUS_INVALID_ALIGNMENT
    assert rd(0x510) == hs.HV_STATUS_INVALID_ALIGNMENT
    assert rd(0x518) == hs.HV_STATUS_INVALID_PARAMETER
    assert rd(0x520) == hs.HV_STATUS_INVALID_CONNECTION_ID
    assert rd(0x528) == hs.HV_STATUS_INVALID_HYPERCALL_CODE
    assert rd(0x530) == hs.HV_STATUS_INVALID_PARAMETER


def test_signal_event_fast_path_lands_on_the_ioeventfd_without_an_exit(make_partition):
    fast = hs.HVCALL_SIGNAL_EVENT | hs.HV_HYPERCALL_FAST_BIT
    src = (SETUP_HYPERCALL + "".join(hypercall(fast, 0x2001, 0x500) for _ in range(5)) +
           hypercall(fast, 0x2002, 0x508) + DONE)
    p = build(make_partition, src)
    efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    try:
        p.register_signal(0x2001, efd)
        r = p.run()
        assert r.passed, r.reason
        assert os.eventfd_read(efd) == 5
    finally:
        os.close(efd)
    assert p.memory.read_u64(0x500) == hs.HV_STATUS_SUCCESS
    assert p.memory.read_u64(0x508) == hs.HV_STATUS_INVALID_CONNECTION_ID
    # Only the unknown connection id and the done ucall left the kernel.
    assert r.exit_totals()["io"]["ring0"] == 2


def test_messages_fill_slots_and_msg_pending_eom_delivers_the_next(make_partition):
    sint_slot = SIMP + 2 * 256

    def on_sync(vp, uc):
        p.hv.post_message(0, 2, 1, b"first")
        p.hv.post_message(0, 2, 1, b"second")

    # Poll the SINT2 slot (masked SINT: no interrupt, the slot is still written), copy each
    # message out, free the slot, and write EOM when MSG_PENDING is set.
    src = (wrmsr(hs.HV_X64_MSR_SCONTROL, 1) + wrmsr(hs.HV_X64_MSR_SIMP, SIMP | 1) +
           wrmsr(hs.HV_X64_MSR_SINT0 + 2, 0x10000 | 0x50) + SYNC +
           "mov $0x600, %rdi\nmov $2, %r12\n"
           f"wait: mov {sint_slot:#x}, %eax\ntest %eax, %eax\njz wait\n"
           f"mov {sint_slot + 16:#x}, %rax\nmov %rax, (%rdi)\nadd $8, %rdi\n"
           f"movb {sint_slot + 5:#x}, %bl\nmovl $0, {sint_slot:#x}\nmfence\n"
           "test $1, %bl\njz noeom\n" + wrmsr(hs.HV_X64_MSR_EOM, 0) +
           "noeom: dec %r12\njnz wait\n" + DONE)
    p = build(make_partition, src, on_sync=on_sync)
    r = p.run()
    assert r.passed, r.reason
    assert p.memory.read(0x600, 5) == b"first"
    assert p.memory.read(0x608, 6) == b"second"
    assert p.hv.stats["messages_queued"] == 1


def test_event_flags_are_set_atomically_in_the_siefp_page(make_partition):
    def on_sync(vp, uc):
        p.hv.signal_event(0, 2, 37)

    flags = SIEFP + 2 * 256
    src = (wrmsr(hs.HV_X64_MSR_SCONTROL, 1) + wrmsr(hs.HV_X64_MSR_SIEFP, SIEFP | 1) + SYNC +
           f"wait: mov {flags + 4:#x}, %eax\ntest $0x20, %eax\njz wait\n" + DONE)
    p = build(make_partition, src, on_sync=on_sync)
    r = p.run()
    assert r.passed, r.reason


def test_synic_page_outside_ram_is_a_gp(make_partition):
    src = wrmsr(hs.HV_X64_MSR_SIMP, 0x7FFF_0000 | 1) + DONE
    p = build(make_partition, src)
    r = p.run()
    assert r.status == "crash"   # #GP with no IDT
    assert p.hv.stats["msr_gp"] == 1
