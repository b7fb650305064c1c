/*
 * hv_synic.h - the SynIC operations the parent must do atomically on guest RAM.
 *
 * Python has no atomic read-modify-write on shared memory, and both of these race with a guest
 * that runs concurrently on another CPU, so they live in C. Freestanding: no libc.
 */
#ifndef HV_SYNIC_H
#define HV_SYNIC_H

#include <stdint.h>

/* Set bit `bit` of an event-flags array (SIEFP page slot) without losing the guest's concurrent
 * test-and-clear of other bits. */
void hvr_event_set_bit(volatile uint32_t *flags, uint32_t bit);

/* Mark a busy SynIC message slot MSG_PENDING so the guest writes EOM when it frees the slot, then
 * re-read message_type: a return of 0 (HVMSG_NONE) means the guest freed the slot before it could
 * have seen the flag, and the caller must deliver now instead of waiting for an EOM. `slot` points
 * at the slot's struct hv_message_header. */
uint32_t hvr_message_mark_pending(volatile void *slot);

#endif
