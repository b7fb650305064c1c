/*
 * hv_synic.c - atomic SynIC updates on guest RAM (see hv_synic.h).
 */
#include "hv_synic.h"

#define HV_MSG_FLAGS_OFFSET 5	/* struct hv_message_header: type u32, size u8, flags u8 */
#define HV_MSG_PENDING 1u

void hvr_event_set_bit(volatile uint32_t *flags, uint32_t bit)
{
	/* Atomic OR: the guest clears bits with a locked instruction (sync_test_and_clear_bit);
	 * a plain load/or/store here could resurrect a bit it just cleared or lose ours. SEQ_CST
	 * also orders the flag before the MSI the caller sends next, so the interrupt handler
	 * finds the bit set. */
	__atomic_fetch_or(&flags[bit >> 5], 1u << (bit & 31), __ATOMIC_SEQ_CST);
}

uint32_t hvr_message_mark_pending(volatile void *slot)
{
	volatile uint8_t *flags = (volatile uint8_t *)slot + HV_MSG_FLAGS_OFFSET;
	volatile uint32_t *type = (volatile uint32_t *)slot;

	__atomic_fetch_or(flags, HV_MSG_PENDING, __ATOMIC_SEQ_CST);
	/* Full fence between our flag store and the type load: the guest does the mirror image
	 * (store type = NONE, mb(), load msg_pending), so at least one side sees the other's store
	 * and a freed slot is never left with a queued message and no EOM coming. */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	return __atomic_load_n(type, __ATOMIC_SEQ_CST);
}
