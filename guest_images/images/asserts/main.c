/*
 * asserts - fails an HV_ASSERT on purpose, to test the ASSERT path: `ring=3|0` (default 3),
 * `kind=cond|eq` (default cond). The failing lines carry an ASSERT-LINE marker (tests find the
 * expected __LINE__ by it); the messages are fixed:
 *   cond: "one + one == 3: expected failure from ring N"  (args 0, 0)
 *   eq:   "one + one == 3 (0x2 != 0x3): expected failure from ring N"  (args 2, 3)
 */
#include "hv.h"

int asserts_fail(void *arg); /* u_asserts.c */

int hv_main(void)
{
	uint64_t ring = hv_arg_u64("ring", 3);

	hv_printf("asserts: failing an assertion in ring %llu on purpose\n", (unsigned long long)ring);
	if (ring == 3)
		hv_run_user(asserts_fail, 0);
	else
		asserts_fail(0);
	hv_printf("asserts: the assertion did not stop the guest\n");
	return 1;
}
