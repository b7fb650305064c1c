/*
 * hv.h - the public API of the hvkvm guest runtime.
 *
 * An image provides `int hv_main(void)` (runs on the BSP in ring 0; its return value goes to
 * hv_done()) and may provide `void hv_ap_main(unsigned cpu)` (runs on each AP in ring 0 after
 * hv_smp_start(); the AP halts when it returns).
 *
 * Which functions may be called from where:
 *   - "any ring": the protocol (hv_log, hv_sync, HV_ASSERT*, hv_done), printing, strings,
 *     command line, hv_cpu/hv_ring, port I/O to the allowed ports. This code lives in the
 *     user-accessible region (files named u_*.c) so ring-3 tasks can call it.
 *   - "ring 0": everything else (LAPIC, IOAPIC, SMP, IRQs, hv_run_user, hv_user_map, time).
 *
 * See guest_images/README.md for the layout and guest_images/PROTOCOL.md for the host contract.
 */
#ifndef HV_H
#define HV_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hv_defs.h"

#define HV_NORETURN __attribute__((noreturn))
#define HV_PRINTF(f, a) __attribute__((format(printf, f, a)))
#define HV_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* ------------------------------------------------------------------------------------------ */
/* The test protocol (PROTOCOL.md). */

#define HV_UCALL_MAGIC 0x4c4c4355u /* "UCLL" */

enum hv_ucall_cmd {
	HV_UCALL_LOG = 1,
	HV_UCALL_SYNC = 2,
	HV_UCALL_ASSERT = 3,
	HV_UCALL_DONE = 4,
	HV_UCALL_FAULT = 5,
};

struct hv_ucall {
	uint32_t magic;      /* HV_UCALL_MAGIC */
	uint32_t cmd;        /* enum hv_ucall_cmd */
	uint32_t vcpu;       /* caller's vCPU index (LAPIC ID) */
	uint32_t ring;       /* caller's CPL (FAULT: the CPL at the fault) */
	uint64_t args[6];    /* SYNC: stage, values; DONE: code; ASSERT: compared values */
	uint32_t line;       /* ASSERT: __LINE__ */
	uint32_t reserved;
	char file[128];      /* ASSERT: __FILE__ */
	char msg[512];       /* LOG text, ASSERT message, FAULT exception name */
	uint64_t vector, error_code, rip, cs, rflags, rsp, ss, cr2; /* FAULT frame */
	uint64_t gprs[16];   /* FAULT: rax rbx rcx rdx rsi rdi rbp rsp r8..r15 */
} __attribute__((aligned(8)));

_Static_assert(sizeof(struct hv_ucall) == 904, "struct hv_ucall must be 904 bytes");
_Static_assert(__builtin_offsetof(struct hv_ucall, msg) == 200, "hv_ucall.msg offset");
_Static_assert(__builtin_offsetof(struct hv_ucall, vector) == 712, "hv_ucall.vector offset");
_Static_assert(__builtin_offsetof(struct hv_ucall, gprs) == 776, "hv_ucall.gprs offset");

/* Fill the header (magic, cmd, vcpu, ring) and zero the rest. Any ring. */
void hv_ucall_init(struct hv_ucall *u, uint32_t cmd);
/* Hand a ucall to the host: a 32-bit `out` of its GPA to HV_UCALL_PORT. Any ring. */
void hv_ucall_send(struct hv_ucall *u);

/* LOG: the host prints the message. With `log=serial` on the command line it is also printed on
 * the UART (QEMU ignores ucalls). Any ring. */
void hv_log(const char *fmt, ...) HV_PRINTF(1, 2);

/* SYNC: hv_sync(stage, v1, ..., v5): args[0] = stage, args[1..] = values; the guest goes on. */
#define hv_sync(...)                                                                      \
	do {                                                                              \
		const uint64_t hv__sync_args[] = { __VA_ARGS__ };                         \
		_Static_assert(HV_ARRAY_SIZE(hv__sync_args) <= 6, "hv_sync: at most 6 args"); \
		hv_sync_v(hv__sync_args, HV_ARRAY_SIZE(hv__sync_args));                   \
	} while (0)
void hv_sync_v(const uint64_t *args, unsigned n);

/* DONE: report the exit code (0 = pass), then `outb code, 0xf4` (QEMU), then stop. Any ring. */
HV_NORETURN void hv_done(int code);

/* ASSERT: on failure report file, line, message and (for _EQ) both values, then stop.
 * HV_ASSERT(cond) or HV_ASSERT(cond, "fmt", args...). HV_ASSERT_EQ(a, b) compares as uint64_t,
 * an optional message may follow. Any ring. */
#define HV_ASSERT(cond, ...)                                                              \
	do {                                                                              \
		if (__builtin_expect(!(cond), 0))                                         \
			hv__assert_fail(__FILE__, __LINE__, #cond, 0, 0, 0, "" __VA_ARGS__); \
	} while (0)
#define HV_ASSERT_EQ(a, b, ...)                                                           \
	do {                                                                              \
		uint64_t hv__a = (uint64_t)(a), hv__b = (uint64_t)(b);                    \
		if (__builtin_expect(hv__a != hv__b, 0))                                  \
			hv__assert_fail(__FILE__, __LINE__, #a " == " #b, 1, hv__a, hv__b,  \
					"" __VA_ARGS__);                                  \
	} while (0)
HV_NORETURN void hv__assert_fail(const char *file, unsigned line, const char *expr, int is_eq,
				 uint64_t a, uint64_t b, const char *fmt, ...) HV_PRINTF(7, 8);

/* Stop this vCPU for good: cli;hlt in ring 0, HV_SYS_HALT from ring 3. Any ring. */
HV_NORETURN void hv_halt(void);

/* ------------------------------------------------------------------------------------------ */
/* Console (16550 UART at COM1). Any ring; output is serialized by a lock. */

int hv_printf(const char *fmt, ...) HV_PRINTF(1, 2);
int hv_vprintf(const char *fmt, va_list ap);
void hv_puts(const char *s); /* no newline added */
/* %d %i %u %x %X %o %c %s %p %% with flags '-' '0' '#' '+' ' ', width and precision (also '*'),
 * length modifiers hh h l ll z t j. Returns the length the full output would have. */
int hv_snprintf(char *buf, size_t size, const char *fmt, ...) HV_PRINTF(3, 4);
int hv_vsnprintf(char *buf, size_t size, const char *fmt, va_list ap);
void hv_uart_init(void); /* ring 0, once, done by the runtime at boot */

/* ------------------------------------------------------------------------------------------ */
/* Command line: `key=value` words separated by spaces (a bare `key` has the value ""). When a
 * key appears more than once the last one wins. Any ring. */

const char *hv_cmdline(void);
/* Copy the value of `key` into buf (NUL-terminated, cut to size); false if the key is absent. */
bool hv_arg(const char *key, char *buf, size_t size);
bool hv_arg_present(const char *key);
/* True if `key` is present with exactly this value. */
bool hv_arg_is(const char *key, const char *value);
/* Numeric value: decimal, 0x hex or 0b binary, optional k/m/g suffix (powers of 1024);
 * `def` when the key is absent or the value does not parse. */
uint64_t hv_arg_u64(const char *key, uint64_t def);
/* Parse a number like hv_arg_u64 does; false if `s` is not one. */
bool hv_parse_u64(const char *s, uint64_t *out);
/* At file scope: HV_ARG_VALUES("dev", "netvsc virtio") declares the values an image accepts
 * for a key. The string "dev=netvsc virtio" goes into the ELF section .hvkvm.args, which is not
 * loaded (no "a" flag), so the host (hvkvm bench: which rows can run) reads what a built image
 * supports from the image itself. Put it next to the check that enforces the same values. */
#define HV_ARG_VALUES(key, values) \
	__asm__(".pushsection .hvkvm.args,\"\",@progbits\n\t.asciz \"" key "=" values \
		"\"\n\t.popsection")

/* ------------------------------------------------------------------------------------------ */
/* Boot information (copied from hvm_start_info at boot; readable from any ring). */

struct hv_memmap_entry {
	uint64_t addr;
	uint64_t size;
	uint32_t type; /* 1 RAM, 2 reserved, 3 ACPI, 4 NVS, 5 unusable */
	uint32_t reserved;
};
#define HV_MEMMAP_MAX 32
#define HV_CMDLINE_MAX 2048

struct hv_boot_info {
	uint32_t start_info_pa; /* GPA of hvm_start_info (0 if the magic did not match) */
	uint32_t memmap_entries;
	uint64_t rsdp_paddr;
	uint64_t ram_bytes; /* sum of type-1 entries */
	struct hv_memmap_entry memmap[HV_MEMMAP_MAX];
	char cmdline[HV_CMDLINE_MAX];
};
extern struct hv_boot_info hv_boot;

/* ------------------------------------------------------------------------------------------ */
/* CPU identity. Any ring. */

struct hv_stackinfo {
	uint32_t cpu;
	uint32_t magic; /* HV_STACK_MAGIC */
};

static inline unsigned hv_cpu(void)
{
	uintptr_t sp;
	__asm__("mov %%rsp, %0" : "=r"(sp));
	return ((const struct hv_stackinfo *)(sp & ~(uintptr_t)(HV_STACK_SIZE - 1)))->cpu;
}

static inline unsigned hv_ring(void)
{
	uint16_t cs;
	__asm__ volatile("mov %%cs, %0" : "=r"(cs));
	return cs & 3;
}

/* ------------------------------------------------------------------------------------------ */
/* Port I/O (ring 3 may use only the ports in the TSS I/O bitmap: 0x3f8-0x3ff, 0xe8-0xeb, 0xf4,
 * 0x5a0-0x5a3). */

static inline void hv_outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(port) : "memory"); }
static inline void hv_outw(uint16_t port, uint16_t v) { __asm__ volatile("outw %0, %1" ::"a"(v), "Nd"(port) : "memory"); }
static inline void hv_outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" ::"a"(v), "Nd"(port) : "memory"); }
static inline uint8_t hv_inb(uint16_t port) { uint8_t v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port) : "memory"); return v; }
static inline uint16_t hv_inw(uint16_t port) { uint16_t v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port) : "memory"); return v; }
static inline uint32_t hv_inl(uint16_t port) { uint32_t v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port) : "memory"); return v; }

static inline void hv_pause(void) { __asm__ volatile("pause" ::: "memory"); }
static inline void hv_barrier(void) { __asm__ volatile("" ::: "memory"); }

static inline void hv_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t *a, uint32_t *b, uint32_t *c,
			    uint32_t *d)
{
	uint32_t ea, eb, ec, ed;
	__asm__ volatile("cpuid" : "=a"(ea), "=b"(eb), "=c"(ec), "=d"(ed) : "a"(leaf), "c"(subleaf));
	if (a) *a = ea;
	if (b) *b = eb;
	if (c) *c = ec;
	if (d) *d = ed;
}

/* Ring 0 only. */
static inline uint64_t hv_rdmsr(uint32_t msr)
{
	uint32_t lo, hi;
	__asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
	return ((uint64_t)hi << 32) | lo;
}
static inline void hv_wrmsr(uint32_t msr, uint64_t v)
{
	__asm__ volatile("wrmsr" ::"c"(msr), "a"((uint32_t)v), "d"((uint32_t)(v >> 32)) : "memory");
}
static inline uint64_t hv_read_cr2(void) { uint64_t v; __asm__ volatile("mov %%cr2, %0" : "=r"(v)); return v; }
static inline uint64_t hv_read_cr3(void) { uint64_t v; __asm__ volatile("mov %%cr3, %0" : "=r"(v)); return v; }
static inline void hv_write_cr3(uint64_t v) { __asm__ volatile("mov %0, %%cr3" ::"r"(v) : "memory"); }
static inline void hv_sti(void) { __asm__ volatile("sti" ::: "memory"); }
static inline void hv_cli(void) { __asm__ volatile("cli" ::: "memory"); }

/* ------------------------------------------------------------------------------------------ */
/* Spinlocks (any ring; no interrupt masking: take them with IF=0 in ring 0). */

typedef struct { volatile uint32_t v; } hv_spinlock_t;
static inline bool hv_spin_trylock(hv_spinlock_t *l) { return __atomic_exchange_n(&l->v, 1, __ATOMIC_ACQUIRE) == 0; }
static inline void hv_spin_lock(hv_spinlock_t *l)
{
	while (!hv_spin_trylock(l))
		while (__atomic_load_n(&l->v, __ATOMIC_RELAXED))
			hv_pause();
}
static inline void hv_spin_unlock(hv_spinlock_t *l) { __atomic_store_n(&l->v, 0, __ATOMIC_RELEASE); }

/* ------------------------------------------------------------------------------------------ */
/* Ring-3 tasks. */

/* Ring 0: run fn(arg) in ring 3 on this vCPU's user stack and return its exit code (the return
 * value of fn, or the argument of hv_exit()). fn and everything it touches must be in the
 * user-accessible region: code and data in u_*.c files, or memory opened with hv_user_map(). */
int hv_run_user(int (*fn)(void *arg), void *arg);

/* Ring 3: the kernel-call ABI (see hv_defs.h). */
static inline uint64_t hv_syscall(uint32_t nr, uint64_t arg)
{
	uint64_t rax = ((uint64_t)HV_SYS_MAGIC << 32) | nr;
	__asm__ volatile("int3" : "+a"(rax) : "D"(arg) : "memory");
	return rax;
}
HV_NORETURN void hv_exit(int code); /* ring 3: end the task */
void hv_yield(void);                /* ring 3: a round trip to the kernel */

/* Ring 0: make [addr, addr+size) user-accessible (sets U on the covering 4 KiB pages below
 * HV_4K_MAPPED_END, on the 2 MiB pages above it, up to 4 GiB). Call before starting APs (or
 * have them reload CR3). Returns false if the range is outside the low 4 GiB. */
bool hv_user_map(uint64_t addr, uint64_t size);

/* ------------------------------------------------------------------------------------------ */
/* LAPIC (xAPIC MMIO at 0xfee00000), interrupts, time. Ring 0. */

#define HV_LAPIC_ID       0x020
#define HV_LAPIC_VERSION  0x030
#define HV_LAPIC_TPR      0x080
#define HV_LAPIC_EOI      0x0b0
#define HV_LAPIC_SVR      0x0f0
#define HV_LAPIC_ESR      0x280
#define HV_LAPIC_ICR_LO   0x300
#define HV_LAPIC_ICR_HI   0x310
#define HV_LAPIC_LVT_TIMER 0x320
#define HV_LAPIC_LVT_LINT0 0x350
#define HV_LAPIC_LVT_LINT1 0x360
#define HV_LAPIC_LVT_ERROR 0x370
#define HV_LAPIC_TIMER_INIT 0x380
#define HV_LAPIC_TIMER_CUR 0x390
#define HV_LAPIC_TIMER_DIV 0x3e0

static inline uint32_t hv_lapic_read(uint32_t reg) { return *(volatile uint32_t *)(uintptr_t)(HV_LAPIC_BASE + reg); }
static inline void hv_lapic_write(uint32_t reg, uint32_t v) { *(volatile uint32_t *)(uintptr_t)(HV_LAPIC_BASE + reg) = v; }
static inline unsigned hv_lapic_id(void) { return hv_lapic_read(HV_LAPIC_ID) >> 24; }
static inline void hv_lapic_eoi(void) { hv_lapic_write(HV_LAPIC_EOI, 0); }

/* ICR low-word values. */
#define HV_ICR_FIXED      0x00000
#define HV_ICR_NMI        0x00400
#define HV_ICR_INIT       0x00500
#define HV_ICR_STARTUP    0x00600
#define HV_ICR_ASSERT     0x04000
#define HV_ICR_SELF       0x40000
#define HV_ICR_ALL        0x80000
#define HV_ICR_OTHERS     0xc0000

/* Send an IPI: icr_lo is vector | delivery mode | flags | shorthand; dest is the APIC ID (ignored
 * with a shorthand). Waits (bounded) for the delivery status to clear. */
void hv_lapic_ipi(unsigned dest, uint32_t icr_lo);
static inline void hv_lapic_self_ipi(uint8_t vector) { hv_lapic_ipi(0, HV_ICR_SELF | HV_ICR_ASSERT | vector); }

/* Interrupt handlers for LAPIC vectors 0x20-0xfe. The runtime sends the EOI after the handler
 * returns. Unhandled vectors are logged (once per vector) and acknowledged. */
struct hv_regs;
typedef void (*hv_irq_handler_t)(unsigned vector, struct hv_regs *regs);
void hv_irq_register(unsigned vector, hv_irq_handler_t fn);

/* Time from this vCPU's LAPIC timer, run as a free counter (masked, one-shot, divide 16) since the
 * vCPU came up. Assumes the 1 GHz APIC bus of KVM and QEMU; saturates after ~68 s. While the
 * timer is armed for interrupts (below) this clock does not run. */
uint64_t hv_time_us(void);
void hv_udelay(uint64_t us);

/* Arm this vCPU's LAPIC timer to raise `vector` after `us` microseconds (then every `us` if
 * periodic); register the handler with hv_irq_register() and run with IF=1 to take it.
 * hv_lapic_timer_stop() masks it and restarts the free-running clock. */
void hv_lapic_timer_arm(uint8_t vector, uint32_t us, bool periodic);
void hv_lapic_timer_stop(void);

/* ------------------------------------------------------------------------------------------ */
/* IOAPIC (MMIO at 0xfec00000). Ring 0, one vCPU at a time with IF=0 (IOREGSEL/IOWIN pairs). */

#define HV_IOAPIC_ID        0x00
#define HV_IOAPIC_VERSION   0x01  /* bits 23:16: number of redirection entries - 1 */
#define HV_IOAPIC_REDTBL(gsi) (0x10 + 2 * (gsi)) /* low word; the high word (dest << 24) is +1 */
/* Redirection entry flags (fixed delivery, physical destination when none are given). */
#define HV_IOAPIC_LOW       (1u << 13) /* polarity active low (default: active high) */
#define HV_IOAPIC_LEVEL     (1u << 15) /* level-triggered (default: edge) */
#define HV_IOAPIC_MASKED    (1u << 16)

uint32_t hv_ioapic_read(uint32_t reg);
void hv_ioapic_write(uint32_t reg, uint32_t v);
/* Route `gsi` to `vector` on the LAPIC with APIC ID `dest`, fixed delivery, physical mode;
 * flags: HV_IOAPIC_LEVEL, HV_IOAPIC_LOW, HV_IOAPIC_MASKED. Register the vector's handler first. */
void hv_ioapic_route(unsigned gsi, uint8_t vector, unsigned dest, uint32_t flags);

/* ------------------------------------------------------------------------------------------ */
/* SMP. Ring 0. */

/* Start all APs (INIT, SIPI, SIPI broadcast to all-excluding-self with the trampoline at
 * HV_TRAMPOLINE_ADDR). Each AP sets itself up (stack, GDT, TSS, IDT, long mode) and calls
 * hv_ap_main(cpu). Returns at once; see hv_cpus_online(). */
void hv_smp_start(void);
/* vCPUs that reached C so far, the BSP included. */
unsigned hv_cpus_online(void);
/* Wait until hv_cpus_online() >= n or timeout_us passed; returns hv_cpus_online(). */
unsigned hv_smp_wait(unsigned n, uint64_t timeout_us);

/* ------------------------------------------------------------------------------------------ */
/* Exception / interrupt frame as saved by the runtime's entry stubs (lowest address first). */

struct hv_regs {
	uint64_t r15, r14, r13, r12, r11, r10, r9, r8;
	uint64_t rbp, rdi, rsi, rdx, rcx, rbx, rax;
	uint64_t vector, error_code;
	uint64_t rip, cs, rflags, rsp, ss; /* pushed by the CPU */
};

/* ------------------------------------------------------------------------------------------ */
/* Strings (freestanding libc subset; any ring; gcc may emit calls to the mem* ones). */

void *memset(void *d, int c, size_t n);
void *memcpy(void *__restrict d, const void *__restrict s, size_t n);
void *memmove(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
size_t strnlen(const char *s, size_t max);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);
char *strchr(const char *s, int c);
size_t hv_strlcpy(char *d, const char *s, size_t size);

/* ------------------------------------------------------------------------------------------ */
/* Guest tests: each HV_TEST is one pytest item (`pytest --hvkvm-image IMAGE`, `hvkvm test`).
 *
 *   HV_TEST(adds_up) { HV_ASSERT_EQ(1 + 1, 2); return 0; }
 *   HV_TEST(in_ring3, .flags = HV_TEST_USER) { ... }       runs as a ring-3 task (define it
 *                                                          in a u_*.c file: user pages)
 *   HV_TEST(known_bug, .flags = HV_TEST_XFAIL) { ... }     expected to fail
 *   HV_TEST(two_cpus, .vcpus = 2, .timeout_s = 30) { ... } needs 2 vCPUs; its own timeout
 *
 * The descriptor goes into the ELF section `hvkvm_tests` (the host reads it from the file); the
 * host boots the image with `test=NAME` on the command line and the runtime runs that test
 * instead of hv_main(). A test returns 0 to pass; an assert or fault fails it. */
#define HV_TEST_XFAIL 1u /* expected to fail */
#define HV_TEST_USER 2u  /* run as a ring-3 task */

struct hv_test {
	const char *name;
	int (*fn)(void);
	const char *file;
	uint32_t line;
	uint32_t flags;
	uint32_t vcpus;     /* vCPUs the test needs (0: 1) */
	uint32_t timeout_s; /* 0: the runner's default */
};

#define HV_TEST(tname, ...)                                                                \
	static int tname(void);                                                            \
	static const struct hv_test hv_test_desc_##tname                                   \
		__attribute__((used, section("hvkvm_tests"), aligned(8))) = {              \
			.name = #tname, .fn = tname, .file = __FILE__, .line = __LINE__,       \
			__VA_ARGS__};                                                      \
	static int tname(void)

/* ------------------------------------------------------------------------------------------ */
/* Provided by the image. */

/* The image's main (a weak default lists the image's tests and returns 0). */
int hv_main(void);
void hv_ap_main(unsigned cpu); /* optional (weak default: return, the AP halts) */

#endif /* HV_H */
