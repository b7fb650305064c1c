/*
 * serial_irq - COM1 interrupts through the IOAPIC: `expect=LINE trigger=edge|level` (defaults:
 * any line, edge).
 *
 * Masks both 8259 PICs (at reset they are unmasked with vector base 0, and the BSP's LINT0 is
 * ExtINT, so IRQ 4 would also arrive as vector 4), routes GSI 4 to UART_VECTOR on this vCPU's
 * APIC ID (fixed, physical, active high, edge or level), enables the UART receive-data interrupt
 * (IER.ERBFI) with MCR.OUT2, sends SYNC 1 (values: vector, 1 if level) and waits with `sti; hlt`.
 * The handler reads IIR until no source is pending, draining LSR.DR/RBR on receive sources
 * (IIR 0x4, or 0xc: the runtime's 14-byte FIFO trigger makes a short line a character timeout);
 * the runtime EOIs after it. When a line ending in '\n' has arrived the guest checks it against
 * `expect` (a trailing '\r' is dropped), prints "got: LINE", then enables IER.ETBEI, waits for a
 * THRE interrupt (IIR 0x2) and disables it again. SYNC 2 (values: interrupts taken, receive
 * identifications, THRE identifications, bytes received), a summary line, done(0).
 */
#include "hv.h"

#define UART_VECTOR 0x44
#define COM1_GSI    4

#define PIC1_DATA   0x21
#define PIC2_DATA   0xa1

#define UART_RBR    0
#define UART_IER    1
#define UART_IIR    2
#define UART_MCR    4
#define UART_LSR    5
#define UART_MSR    6

#define IER_ERBFI   0x01
#define IER_ETBEI   0x02
#define MCR_DTR_RTS_OUT2 0x0b
#define LSR_DR      0x01

#define IIR_NONE    0x01
#define IIR_ID      0x0f
#define IIR_MSR     0x00
#define IIR_THRE    0x02
#define IIR_RDA     0x04
#define IIR_RLS     0x06
#define IIR_TIMEOUT 0x0c

#define LINE_MAX    256

static volatile uint64_t irqs;      /* handler invocations */
static volatile uint64_t rx_ids;    /* IIR reported received data (0x4 or 0xc) */
static volatile uint64_t thre_ids;  /* IIR reported THRE (0x2) */
static volatile uint64_t empty_irqs; /* handler found no source pending */
static volatile uint64_t rx_bytes;
static volatile uint8_t last_thre_iir;
static volatile bool line_done;
static char line[LINE_MAX];
static volatile unsigned line_len;

static void rx_byte(uint8_t c)
{
	rx_bytes++;
	if (line_done)
		return; /* bytes after the line are counted, not kept */
	if (c == '\n') {
		line_done = true;
		return;
	}
	if (line_len < LINE_MAX - 1)
		line[line_len++] = (char)c;
}

static void on_uart(unsigned vector, struct hv_regs *regs)
{
	unsigned rounds = 0;
	uint8_t iir;

	(void)vector;
	(void)regs;
	irqs++;
	/* Until IIR says nothing is pending: the line is then low, so the next source is a new
	 * edge. Bounded, in case a source never clears. */
	while (!((iir = hv_inb(HV_COM1 + UART_IIR)) & IIR_NONE) && rounds++ < 64) {
		switch (iir & IIR_ID) {
		case IIR_RDA:
		case IIR_TIMEOUT:
			rx_ids++;
			for (unsigned i = 0; i < 64 && (hv_inb(HV_COM1 + UART_LSR) & LSR_DR); i++)
				rx_byte(hv_inb(HV_COM1 + UART_RBR));
			break;
		case IIR_THRE:
			thre_ids++; /* the IIR read that reported it acknowledged it */
			last_thre_iir = iir;
			break;
		case IIR_RLS:
			hv_inb(HV_COM1 + UART_LSR);
			break;
		case IIR_MSR:
			hv_inb(HV_COM1 + UART_MSR);
			break;
		}
	}
	if (rounds == 0)
		empty_irqs++;
}

int hv_main(void)
{
	char expect[LINE_MAX];
	char trigger[8] = "edge";
	bool have_expect = hv_arg("expect", expect, sizeof(expect));
	uint32_t flags, entry, ver;
	uint64_t thre_before;
	uint8_t iir;

	hv_arg("trigger", trigger, sizeof(trigger));
	HV_ASSERT(!strcmp(trigger, "edge") || !strcmp(trigger, "level"),
		  "serial_irq: trigger must be edge or level, not '%s'", trigger);
	flags = !strcmp(trigger, "level") ? HV_IOAPIC_LEVEL : 0;

	/* Everything below runs with IF=0 until the `sti; hlt` waits. */
	hv_outb(PIC1_DATA, 0xff);
	hv_outb(PIC2_DATA, 0xff);
	hv_irq_register(UART_VECTOR, on_uart);

	ver = hv_ioapic_read(HV_IOAPIC_VERSION);
	HV_ASSERT(((ver >> 16) & 0xff) >= COM1_GSI, "serial_irq: IOAPIC version 0x%x has no GSI %u",
		  ver, COM1_GSI);
	hv_ioapic_route(COM1_GSI, UART_VECTOR, hv_lapic_id(), flags);
	entry = hv_ioapic_read(HV_IOAPIC_REDTBL(COM1_GSI));
	HV_ASSERT_EQ(entry & 0x1ffff, UART_VECTOR | flags, "IOAPIC redirection entry for GSI 4");

	hv_outb(HV_COM1 + UART_MCR, MCR_DTR_RTS_OUT2); /* OUT2 gates the IRQ line on a PC */
	hv_outb(HV_COM1 + UART_IER, IER_ERBFI);
	hv_sync(1, UART_VECTOR, flags ? 1 : 0);

	/* Receive: only the handler touches RBR; this loop just sleeps until it saw '\n'. */
	while (!line_done)
		__asm__ volatile("sti; hlt; cli" ::: "memory");
	if (line_len && line[line_len - 1] == '\r')
		line_len--;
	line[line_len] = 0;
	HV_ASSERT(irqs >= 1 && rx_ids >= 1, "serial_irq: line without a receive interrupt");
	if (have_expect)
		HV_ASSERT(!strcmp(line, expect), "serial_irq: got '%s', expected '%s'", line, expect);
	hv_printf("got: %s\n", line);

	/* THRE: enabling ETBEI with THR empty raises it at once; nothing is written meanwhile. */
	thre_before = thre_ids;
	hv_outb(HV_COM1 + UART_IER, IER_ERBFI | IER_ETBEI);
	while (thre_ids == thre_before)
		__asm__ volatile("sti; hlt; cli" ::: "memory");
	hv_outb(HV_COM1 + UART_IER, IER_ERBFI);
	HV_ASSERT_EQ(last_thre_iir & IIR_ID, IIR_THRE, "IIR reported for the THRE interrupt");
	iir = hv_inb(HV_COM1 + UART_IIR);
	HV_ASSERT(iir & IIR_NONE, "serial_irq: IIR 0x%x still pending with ETBEI off", iir);

	hv_outb(HV_COM1 + UART_IER, 0);
	hv_ioapic_route(COM1_GSI, UART_VECTOR, hv_lapic_id(), flags | HV_IOAPIC_MASKED);

	hv_sync(2, irqs, rx_ids, thre_ids, rx_bytes);
	hv_printf("serial_irq: %llu interrupts (%s): %llu receive, %llu THRE, %llu empty; "
		  "%llu bytes\n", (unsigned long long)irqs, trigger, (unsigned long long)rx_ids,
		  (unsigned long long)thre_ids, (unsigned long long)empty_irqs,
		  (unsigned long long)rx_bytes);
	return 0;
}
