/* selftest's ring-3 tests (user pages: the file name starts with u_). */
#include "hv.h"

HV_TEST(runs_in_ring3, .flags = HV_TEST_USER)
{
	HV_ASSERT_EQ(hv_ring(), 3);
	return 0;
}

HV_TEST(ring3_fault_is_reported, .flags = HV_TEST_USER | HV_TEST_XFAIL)
{
	*(volatile uint64_t *)0x1000 = 1; /* a supervisor page: #PF from ring 3 */
	return 0;
}
