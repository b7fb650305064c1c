/*
 * selftest - guest tests of the runtime itself, and the example of HV_TEST: every test here is a
 * pytest item (`pytest --hvkvm-image selftest`) and a line of `hvkvm test selftest --tap`.
 */
#include "hv.h"

static volatile uint64_t sink;

HV_TEST(arithmetic_in_ring0)
{
	HV_ASSERT_EQ(hv_ring(), 0);
	HV_ASSERT_EQ(6 * 7, 42);
	return 0;
}

HV_TEST(cmdline_reaches_the_test)
{
	char buf[32];

	HV_ASSERT(hv_arg("test", buf, sizeof(buf)), "test= missing from the command line");
	HV_ASSERT(!strcmp(buf, "cmdline_reaches_the_test"), "test=%s", buf);
	return 0;
}

HV_TEST(printf_formats)
{
	char buf[64];

	hv_snprintf(buf, sizeof(buf), "%d %x %s %05u", -3, 0xbeef, "ok", 42u);
	HV_ASSERT(!strcmp(buf, "-3 beef ok 00042"), "got '%s'", buf);
	return 0;
}

HV_TEST(two_vcpus_come_up, .vcpus = 2, .timeout_s = 60)
{
	hv_smp_start();
	HV_ASSERT_EQ(hv_smp_wait(2, 5000000), 2);
	return 0;
}

HV_TEST(failing_assert_is_expected, .flags = HV_TEST_XFAIL)
{
	sink = 1;
	HV_ASSERT_EQ(sink + 1, 3, "an expected failure: shows file:line and a backtrace");
	return 0;
}

HV_TEST(nonzero_return_fails, .flags = HV_TEST_XFAIL)
{
	return 3;
}
