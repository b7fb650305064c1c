/* asserts: the failing assertions (user-accessible: runs in ring 3, or ring 0 with ring=0). */
#include "hv.h"

int asserts_fail(void *arg)
{
	volatile int one = 1;

	(void)arg;
	if (hv_arg_is("kind", "eq"))
		HV_ASSERT_EQ(one + one, 3, "expected failure from ring %u", hv_ring()); /* ASSERT-LINE eq */
	HV_ASSERT(one + one == 3, "expected failure from ring %u", hv_ring()); /* ASSERT-LINE cond */
	return 0;
}
