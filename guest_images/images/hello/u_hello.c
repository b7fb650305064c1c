/* hello's ring-3 task (user-accessible because the file name starts with u_). */
#include "hv.h"

int hello_user(void *arg)
{
	(void)arg;
	hv_printf("Hello from ring 3 (vCPU %u, CPL %u)\n", hv_cpu(), hv_ring());
	return 0;
}
