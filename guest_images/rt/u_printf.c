/*
 * u_printf.c - the 16550 UART console and a small printf. User-accessible: ring 3 prints through
 * the same code (ports 0x3f8-0x3ff are open in the TSS I/O bitmap).
 */
#include "rt.h"

#define UART_THR 0 /* transmit holding (DLAB=0) */
#define UART_DLL 0 /* divisor latch low (DLAB=1) */
#define UART_IER 1
#define UART_DLM 1
#define UART_FCR 2 /* write */
#define UART_IIR 2 /* read */
#define UART_LCR 3
#define UART_MCR 4
#define UART_LSR 5
#define LSR_THRE 0x20

bool rt_log_serial;

static unsigned uart_fifo = 1; /* bytes we may write after seeing THRE */
static unsigned uart_room;
static hv_spinlock_t console_spin;
static volatile int console_owner = -1;
static unsigned console_depth;

void hv_uart_init(void)
{
	hv_outb(HV_COM1 + UART_IER, 0x00);  /* no interrupts */
	hv_outb(HV_COM1 + UART_LCR, 0x80);  /* DLAB */
	hv_outb(HV_COM1 + UART_DLL, 0x01);  /* 115200 baud */
	hv_outb(HV_COM1 + UART_DLM, 0x00);
	hv_outb(HV_COM1 + UART_LCR, 0x03);  /* 8N1, DLAB off */
	hv_outb(HV_COM1 + UART_FCR, 0xc7);  /* FIFO on, clear both, 14-byte trigger */
	hv_outb(HV_COM1 + UART_MCR, 0x0b);  /* DTR, RTS, OUT2 */
	/* A 16550A reports its working FIFO in IIR[7:6]; then THRE means 16 free bytes. */
	uart_fifo = (hv_inb(HV_COM1 + UART_IIR) & 0xc0) == 0xc0 ? 16 : 1;
	uart_room = 0;
}

static void uart_putc(char c)
{
	if (uart_room == 0) {
		for (unsigned i = 0; i < 100000 && !(hv_inb(HV_COM1 + UART_LSR) & LSR_THRE); i++)
			hv_pause();
		uart_room = uart_fifo;
	}
	hv_outb(HV_COM1 + UART_THR, (uint8_t)c);
	uart_room--;
}

void rt_console_lock(void)
{
	int me = (int)hv_cpu();

	if (console_owner == me) { /* re-entered on this vCPU (a fault while printing) */
		console_depth++;
		return;
	}
	hv_spin_lock(&console_spin);
	console_owner = me;
	console_depth = 1;
}

void rt_console_unlock(void)
{
	if (--console_depth == 0) {
		console_owner = -1;
		hv_spin_unlock(&console_spin);
	}
}

void rt_console_write(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		uart_putc(s[i]);
}

void hv_puts(const char *s)
{
	rt_console_lock();
	rt_console_write(s, strlen(s));
	rt_console_unlock();
}

/* ---------------------------------------------------------------------------------------- */
/* The formatter: emits through a callback, returns the full length. */

typedef void (*emit_fn)(void *ctx, char c);

#define F_LEFT  1
#define F_ZERO  2
#define F_PLUS  4
#define F_SPACE 8
#define F_ALT   16

static int emit_pad(emit_fn emit, void *ctx, char c, int n)
{
	for (int i = 0; i < n; i++)
		emit(ctx, c);
	return n > 0 ? n : 0;
}

static int emit_number(emit_fn emit, void *ctx, unsigned long long v, bool neg, unsigned base,
		       bool upper, int flags, int width, int prec)
{
	const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
	char buf[32];
	int n = 0, out = 0;
	char sign = 0;
	const char *prefix = "";
	int plen, zeros = 0, len;

	if (!(v == 0 && prec == 0)) {
		do {
			buf[n++] = digits[v % base];
			v /= base;
		} while (v);
	}
	if (neg)
		sign = '-';
	else if (flags & F_PLUS)
		sign = '+';
	else if (flags & F_SPACE)
		sign = ' ';
	if ((flags & F_ALT) && base == 16)
		prefix = upper ? "0X" : "0x";
	else if ((flags & F_ALT) && base == 8 && (n == 0 || buf[n - 1] != '0'))
		prefix = "0";
	plen = (int)strlen(prefix) + (sign ? 1 : 0);
	if (prec > n)
		zeros = prec - n;
	len = plen + zeros + n;
	if ((flags & F_ZERO) && !(flags & F_LEFT) && prec < 0 && width > len) {
		zeros += width - len;
		len = width;
	}
	if (!(flags & F_LEFT))
		out += emit_pad(emit, ctx, ' ', width - len);
	if (sign) {
		emit(ctx, sign);
		out++;
	}
	for (const char *p = prefix; *p; p++, out++)
		emit(ctx, *p);
	out += emit_pad(emit, ctx, '0', zeros);
	while (n)
		emit(ctx, buf[--n]), out++;
	if (flags & F_LEFT)
		out += emit_pad(emit, ctx, ' ', width - len);
	return out;
}

static int format(emit_fn emit, void *ctx, const char *fmt, va_list ap)
{
	int total = 0;

	for (; *fmt; fmt++) {
		int flags = 0, width = 0, prec = -1, lng = 0;
		bool upper = false;

		if (*fmt != '%') {
			emit(ctx, *fmt);
			total++;
			continue;
		}
		for (;;) {
			char f = *++fmt;
			if (f == '-') flags |= F_LEFT;
			else if (f == '0') flags |= F_ZERO;
			else if (f == '+') flags |= F_PLUS;
			else if (f == ' ') flags |= F_SPACE;
			else if (f == '#') flags |= F_ALT;
			else break;
		}
		if (*fmt == '*') {
			width = va_arg(ap, int);
			if (width < 0) {
				flags |= F_LEFT;
				width = -width;
			}
			fmt++;
		} else {
			while (*fmt >= '0' && *fmt <= '9')
				width = width * 10 + (*fmt++ - '0');
		}
		if (*fmt == '.') {
			fmt++;
			prec = 0;
			if (*fmt == '*') {
				prec = va_arg(ap, int);
				fmt++;
			} else {
				while (*fmt >= '0' && *fmt <= '9')
					prec = prec * 10 + (*fmt++ - '0');
			}
		}
		for (;; fmt++) {
			if (*fmt == 'l') lng++;
			else if (*fmt == 'z' || *fmt == 't' || *fmt == 'j') lng = 2;
			else if (*fmt == 'h') lng = lng > 0 ? 0 : lng - 1;
			else break;
		}
		switch (*fmt) {
		case 'd':
		case 'i': {
			long long v = lng >= 2 ? va_arg(ap, long long) : lng == 1 ? va_arg(ap, long) : va_arg(ap, int);
			if (lng == -1) v = (short)v;
			if (lng <= -2) v = (signed char)v;
			total += emit_number(emit, ctx, v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v,
					     v < 0, 10, false, flags, width, prec);
			break;
		}
		case 'X':
			upper = true;
			/* fall through */
		case 'u':
		case 'x':
		case 'o': {
			unsigned long long v = lng >= 2 ? va_arg(ap, unsigned long long)
					     : lng == 1 ? va_arg(ap, unsigned long) : va_arg(ap, unsigned int);
			unsigned base = *fmt == 'u' ? 10 : *fmt == 'o' ? 8 : 16;
			if (lng == -1) v = (unsigned short)v;
			if (lng <= -2) v = (unsigned char)v;
			total += emit_number(emit, ctx, v, false, base, upper, flags & ~(F_PLUS | F_SPACE), width, prec);
			break;
		}
		case 'p':
			total += emit_number(emit, ctx, (uintptr_t)va_arg(ap, void *), false, 16, false,
					     (flags | F_ALT) & ~(F_PLUS | F_SPACE), width, prec);
			break;
		case 'c': {
			char c = (char)va_arg(ap, int);
			if (!(flags & F_LEFT))
				total += emit_pad(emit, ctx, ' ', width - 1);
			emit(ctx, c);
			total++;
			if (flags & F_LEFT)
				total += emit_pad(emit, ctx, ' ', width - 1);
			break;
		}
		case 's': {
			const char *s = va_arg(ap, const char *);
			int len;
			if (!s)
				s = "(null)";
			len = (int)strnlen(s, prec >= 0 ? (size_t)prec : (size_t)-1);
			if (!(flags & F_LEFT))
				total += emit_pad(emit, ctx, ' ', width - len);
			for (int i = 0; i < len; i++)
				emit(ctx, s[i]);
			total += len;
			if (flags & F_LEFT)
				total += emit_pad(emit, ctx, ' ', width - len);
			break;
		}
		case '%':
			emit(ctx, '%');
			total++;
			break;
		case 0:
			return total; /* '%' at the end of the format */
		default: /* unknown conversion: print it as it stands */
			emit(ctx, '%');
			emit(ctx, *fmt);
			total += 2;
			break;
		}
	}
	return total;
}

struct strbuf {
	char *buf;
	size_t size, len;
};

static void emit_str(void *ctx, char c)
{
	struct strbuf *b = ctx;

	if (b->len + 1 < b->size)
		b->buf[b->len] = c;
	b->len++;
}

int hv_vsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
{
	struct strbuf b = { buf, size, 0 };
	int n = format(emit_str, &b, fmt, ap);

	if (size)
		buf[b.len < size ? b.len : size - 1] = 0;
	return n;
}

int hv_snprintf(char *buf, size_t size, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = hv_vsnprintf(buf, size, fmt, ap);
	va_end(ap);
	return n;
}

struct conbuf {
	char b[128];
	size_t n;
};

static void emit_console(void *ctx, char c)
{
	struct conbuf *p = ctx;

	p->b[p->n++] = c;
	if (p->n == sizeof(p->b)) {
		rt_console_write(p->b, p->n);
		p->n = 0;
	}
}

int hv_vprintf(const char *fmt, va_list ap)
{
	struct conbuf p;
	int n;

	p.n = 0;
	rt_console_lock();
	n = format(emit_console, &p, fmt, ap);
	rt_console_write(p.b, p.n);
	rt_console_unlock();
	return n;
}

int hv_printf(const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = hv_vprintf(fmt, ap);
	va_end(ap);
	return n;
}
