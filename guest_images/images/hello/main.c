/*
 * hello - greets from ring 0, prints its command line, runs a ring-3 task that greets from
 * ring 3 and returns 0, then done(0).
 */
#include "hv.h"

int hello_user(void *arg); /* u_hello.c */

int hv_main(void)
{
	int rc;

	hv_printf("Hello from the child partition (ring 0)\n");
	hv_printf("cmdline: %s\n", hv_cmdline());
	hv_printf("vCPU %u, %llu MiB RAM in %u memory-map entries\n", hv_cpu(),
		  (unsigned long long)(hv_boot.ram_bytes >> 20), hv_boot.memmap_entries);
	rc = hv_run_user(hello_user, 0);
	hv_printf("ring-3 task exited with %d\n", rc);
	HV_ASSERT_EQ(rc, 0);
	return 0;
}
