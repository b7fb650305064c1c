/*
 * hostile_lib.c - the kernel half shared by the hostile images (see hostile.h): the attack
 * dispatcher (hv_main), a #GP handler that lets rdmsr/wrmsr of anything continue, a raw reader
 * of the VMBus SINT's message slot, raw HvPostMessage, and echo-channel helpers.
 */
#include "hostile.h"
#include "rt.h"

/* ---- #GP: skip the faulting rdmsr/wrmsr ------------------------------------------------------- */

volatile uint64_t hostile_gp_count;
/* Bytes to skip at a #GP (2: rdmsr/wrmsr); 0: not armed, the runtime reports the fault. */
volatile uint64_t hostile_gp_skip;
uint64_t hostile_gp_orig;

void hostile_gp_entry(void);
__asm__(".text\n"
	".globl hostile_gp_entry\n"
	"hostile_gp_entry:\n"
	"	cmpq $0, hostile_gp_skip(%rip)\n"
	"	je 1f\n"
	"	pushq %rax\n"
	"	movq hostile_gp_skip(%rip), %rax\n"
	"	addq %rax, 16(%rsp)\n"          /* [rsp]=rax [rsp+8]=error code [rsp+16]=rip */
	"	lock incq hostile_gp_count(%rip)\n"
	"	popq %rax\n"
	"	addq $8, %rsp\n"
	"	iretq\n"
	"1:	jmp *hostile_gp_orig(%rip)\n");

static void install_gp_handler(void)
{
	struct __attribute__((packed)) {
		uint16_t limit;
		uint64_t base;
	} idtr;
	uint64_t *gate, off = (uint64_t)(uintptr_t)hostile_gp_entry;

	__asm__ volatile("sidt %0" : "=m"(idtr));
	gate = (uint64_t *)(uintptr_t)(idtr.base + 13 * 16);
	hostile_gp_orig = (uint64_t)(uintptr_t)(rt_isr_stubs + 13 * 16);
	gate[0] = (gate[0] & 0x0000ffffffff0000ULL) | (off & 0xffff) | ((off >> 16) & 0xffff) << 48;
	gate[1] = off >> 32;
}

bool hostile_rdmsr(uint32_t msr, uint64_t *value)
{
	uint32_t lo = 0, hi = 0;
	uint64_t before = hostile_gp_count;

	hostile_gp_skip = 2;
	__asm__ volatile("rdmsr" : "+a"(lo), "+d"(hi) : "c"(msr) : "memory");
	hostile_gp_skip = 0;
	*value = (uint64_t)hi << 32 | lo;
	return hostile_gp_count == before;
}

bool hostile_wrmsr(uint32_t msr, uint64_t value)
{
	uint64_t before = hostile_gp_count;

	hostile_gp_skip = 2;
	__asm__ volatile("wrmsr" ::"c"(msr), "a"((uint32_t)value), "d"((uint32_t)(value >> 32))
			 : "memory");
	hostile_gp_skip = 0;
	return hostile_gp_count == before;
}

/* ---- raw SynIC messages --------------------------------------------------------------------- */

struct hostile_msgs hostile_msgs;

static void record(const uint8_t *p, uint32_t size)
{
	uint32_t type = 0, w[4] = {0, 0, 0, 0};

	memcpy(w, p, size < 16 ? size : 16);
	type = w[0];
	hostile_msgs.count[type < 31 ? type : 31]++;
	hostile_msgs.total++;
	switch (type) {
	case CHANNELMSG_GPADL_CREATED: /* header, child_relid, gpadl, creation_status */
		hostile_msgs.last_gpadl_handle = w[3];
		memcpy(&hostile_msgs.last_gpadl_status, p + 16, 4);
		if (hostile_msgs.last_gpadl_status)
			hostile_msgs.gpadl_failed++;
		else
			hostile_msgs.gpadl_ok++;
		break;
	case CHANNELMSG_OPENCHANNEL_RESULT: /* header, child_relid, openid, status */
		hostile_msgs.last_open_relid = w[2];
		memcpy(&hostile_msgs.last_open_status, p + 16, 4);
		break;
	case CHANNELMSG_VERSION_RESPONSE:
		hostile_msgs.last_version_supported = p[8];
		break;
	case CHANNELMSG_GPADL_TORNDOWN:
		hostile_msgs.torndown++;
		break;
	default:
		break;
	}
}

uint32_t hostile_drain(void)
{
	volatile struct hv_message *slot = &hv_synic_simp()->sint_message[VMBUS_MESSAGE_SINT];
	uint8_t copy[HV_MESSAGE_PAYLOAD_BYTE_COUNT];
	uint32_t n = 0;

	while (slot->header.message_type != HVMSG_NONE && n < 100000) {
		uint32_t size = slot->header.payload_size;

		__atomic_thread_fence(__ATOMIC_ACQUIRE);
		if (size > sizeof(copy))
			size = sizeof(copy);
		memcpy(copy, (const void *)slot->u.payload, size);
		slot->header.message_type = HVMSG_NONE;
		__atomic_thread_fence(__ATOMIC_SEQ_CST);
		if (slot->header.message_flags.msg_pending)
			hv_wrmsr(HV_X64_MSR_EOM, 0); /* the parent delivers the next one now */
		record(copy, size);
		n++;
	}
	return n;
}

static uint8_t post_page[HVR_PAGE_SIZE] __attribute__((aligned(HVR_PAGE_SIZE)));

uint64_t hostile_post(uint32_t conn, uint32_t type, const void *msg, uint32_t size)
{
	uint32_t *h = (uint32_t *)post_page;
	uint32_t copy = size < HVR_PAGE_SIZE - 16 ? size : HVR_PAGE_SIZE - 16;
	uint64_t st;

	h[0] = conn;
	h[1] = 0;
	h[2] = type;
	h[3] = size;
	memcpy(post_page + 16, msg, copy);
	st = hv_hypercall(HVCALL_POST_MESSAGE, (uintptr_t)post_page, 0) & HV_HYPERCALL_RESULT_MASK;
	hostile_drain();
	return st;
}

uint64_t hostile_post_msg(const void *msg, uint32_t size)
{
	return hostile_post(vmbus_conn.msg_conn_id, 1, msg, size);
}

/* ---- echo channels ---------------------------------------------------------------------------- */

struct vmbus_channel *hostile_open_echo(unsigned n, void *area, uint32_t pages)
{
	struct vmbus_channel *ch;
	int rc;

	if (!vmbus_conn.version) {
		rc = vmbus_init(VMBUS_VECTOR_DEFAULT);
		HV_ASSERT(rc == 0, "hostile: VMBus init failed: %d", rc);
	}
	ch = vmbus_find_channel(&HOSTILE_ECHO_GUID, n);
	HV_ASSERT(ch != NULL, "hostile: no echo offer #%u among %u", n, vmbus_conn.offers);
	rc = vmbus_channel_open(ch, area, pages + 1, pages + 1);
	HV_ASSERT(rc == 0, "hostile: opening echo #%u failed: %d (host status 0x%x)", n, rc,
		  vmbus_last_host_status);
	return ch;
}

static uint8_t echo_buf[16384];

uint32_t hostile_echo(struct vmbus_channel *ch, uint32_t count, uint32_t len, uint32_t timeout_ms)
{
	struct vmbus_rings *r = &ch->rings;
	uint32_t ok = 0;
	struct hvr_pkt pkt;
	int rc;

	if (len > sizeof(echo_buf))
		len = sizeof(echo_buf);
	for (uint32_t i = 0; i < len; i++)
		echo_buf[i] = (uint8_t)(i * 13 + ch->relid);
	hvr_in_set_interrupt_mask(&r->in, 1);
	for (uint32_t i = 0; i < count; i++) {
		uint64_t trans = 0xe0c0000000ull | ((uint64_t)ch->relid << 16) | i;
		uint64_t deadline;
		bool got = false;

		deadline = hv_time_us() + (uint64_t)timeout_ms * 1000;
		while ((rc = vmbus_rings_write(r, echo_buf, len, trans, 0)) == HVR_FULL &&
		       hv_time_us() < deadline)
			hv_pause(); /* the parent frees space when it commits its read */
		if (rc != HVR_OK)
			break;
		rc = vmbus_rings_commit(r);
		if (rc < 0)
			break;
		hv_signal_event(ch->connection_id); /* always: the parent may be asleep either way */
		deadline = hv_time_us() + (uint64_t)timeout_ms * 1000;
		while (!got && hv_time_us() < deadline) {
			rc = vmbus_rings_read(r, &pkt);
			if (rc == HVR_EMPTY) {
				hv_pause();
				continue;
			}
			if (rc != HVR_OK)
				break;
			if (pkt.type == VM_PKT_DATA_INBAND && pkt.trans_id == trans &&
			    pkt.payload_len == ((len + 7) & ~7u) &&
			    vmbus_rings_payload_cmp(r, &pkt, echo_buf, len) == -1)
				got = true;
			if (vmbus_rings_release(r) == 1)
				hv_signal_event(ch->connection_id);
		}
		if (!got)
			break;
		ok++;
	}
	hvr_in_set_interrupt_mask(&r->in, 0);
	return ok;
}

void hostile_bystander_check(struct vmbus_channel *ch)
{
	uint32_t ok = hostile_echo(ch, 8, 200, 5000);

	hv_sync(SYNC_BYSTANDER, 8, ok);
	HV_ASSERT_EQ(ok, 8, "hostile: the bystander channel (relid %u) stopped echoing", ch->relid);
}

/* ---- the dispatcher ------------------------------------------------------------------------------ */

int hv_main(void)
{
	char name[48] = "";
	unsigned i;

	install_gp_handler();
	hv_arg("attack", name, sizeof(name));
	for (i = 0; hostile_attacks[i].name; i++)
		if (!strcmp(hostile_attacks[i].name, name))
			break;
	if (!hostile_attacks[i].name) {
		hv_printf("hostile: attack=NAME, one of:");
		for (i = 0; hostile_attacks[i].name; i++)
			hv_printf(" %s", hostile_attacks[i].name);
		hv_printf("\n");
		HV_ASSERT(0, "hostile: unknown attack '%s'", name);
	}
	hv_log("hostile: attack %s", name);
	hv_sync(SYNC_START, i);
	return hostile_attacks[i].fn();
}
