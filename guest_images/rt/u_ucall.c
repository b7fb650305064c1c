/*
 * u_ucall.c - the guest side of the test protocol (PROTOCOL.md): LOG, SYNC, ASSERT, DONE.
 * User-accessible: usable from ring 0 and ring 3 alike. The struct hv_ucall lives on the
 * caller's stack (identity-mapped, below 4 GiB, writable by the caller).
 */
#include "rt.h"

void hv_ucall_init(struct hv_ucall *u, uint32_t cmd)
{
	memset(u, 0, sizeof(*u));
	u->magic = HV_UCALL_MAGIC;
	u->cmd = cmd;
	u->vcpu = hv_cpu();
	u->ring = hv_ring();
}

void hv_ucall_send(struct hv_ucall *u)
{
	hv_outl(HV_UCALL_PORT, (uint32_t)(uintptr_t)u);
}

void hv_log(const char *fmt, ...)
{
	struct hv_ucall u;
	va_list ap;

	hv_ucall_init(&u, HV_UCALL_LOG);
	va_start(ap, fmt);
	hv_vsnprintf(u.msg, sizeof(u.msg), fmt, ap);
	va_end(ap);
	hv_ucall_send(&u);
	if (rt_log_serial) {
		size_t n = strlen(u.msg);
		hv_printf("%s%s", u.msg, n && u.msg[n - 1] == '\n' ? "" : "\n");
	}
}

void hv_sync_v(const uint64_t *args, unsigned n)
{
	struct hv_ucall u;

	hv_ucall_init(&u, HV_UCALL_SYNC);
	for (unsigned i = 0; i < n && i < HV_ARRAY_SIZE(u.args); i++)
		u.args[i] = args[i];
	hv_ucall_send(&u);
}

HV_NORETURN void hv_halt(void)
{
	if (hv_ring() == 0)
		rt_halt_forever();
	for (;;) {
		hv_syscall(HV_SYS_HALT, 0);
		hv_pause();
	}
}

HV_NORETURN void hv_done(int code)
{
	struct hv_ucall u;

	hv_ucall_init(&u, HV_UCALL_DONE);
	u.args[0] = (uint64_t)(int64_t)code;
	hv_ucall_send(&u);
	hv_outb(HV_QEMU_EXIT_PORT, (uint8_t)code);
	hv_halt();
}

HV_NORETURN void hv__assert_fail(const char *file, unsigned line, const char *expr, int is_eq,
				 uint64_t a, uint64_t b, const char *fmt, ...)
{
	struct hv_ucall u;
	size_t n;

	hv_ucall_init(&u, HV_UCALL_ASSERT);
	u.line = line;
	u.args[0] = a;
	u.args[1] = b;
	hv_strlcpy(u.file, file, sizeof(u.file));
	if (is_eq)
		n = (size_t)hv_snprintf(u.msg, sizeof(u.msg), "%s (0x%llx != 0x%llx)", expr,
					(unsigned long long)a, (unsigned long long)b);
	else
		n = (size_t)hv_snprintf(u.msg, sizeof(u.msg), "%s", expr);
	if (fmt[0] && n + 2 < sizeof(u.msg)) {
		va_list ap;

		u.msg[n++] = ':';
		u.msg[n++] = ' ';
		va_start(ap, fmt);
		hv_vsnprintf(u.msg + n, sizeof(u.msg) - n, fmt, ap);
		va_end(ap);
	}
	hv_ucall_send(&u);
	hv_printf("ASSERT failed on vCPU %u in ring %u at %s:%u: %s\n", u.vcpu, u.ring, file, line,
		  u.msg);
	hv_outb(HV_QEMU_EXIT_PORT, HV_QEMU_EXIT_ASSERT);
	hv_halt();
}
