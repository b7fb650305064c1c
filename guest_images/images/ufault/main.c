/*
 * ufault - faults on purpose, to test the FAULT path: `kind=write|null|ud|gp|de ring=3|0`
 * (defaults: kind=write ring=3).
 *   write: ring 3 writes to a kernel-only page: #PF, error code 0x7 (present|write|user),
 *          CR2 = the address (printed first). Ring 3 only.
 *   null:  write to address 0 (never mapped): #PF.
 *   ud:    ud2: #UD.    gp: ring 3: `cli` (IOPL 0); ring 0: load of a non-canonical address: #GP.
 *   de:    division by zero: #DE.
 */
#include "hv.h"
#include "ufault.h"

static volatile uint64_t kernel_only_word; /* in the kernel's .bss: supervisor-only */

int hv_main(void)
{
	char kind[16] = "write";
	uint64_t ring = hv_arg_u64("ring", 3);

	hv_arg("kind", kind, sizeof(kind));
	ufault_params.kind = !strcmp(kind, "write") ? UFAULT_WRITE
			   : !strcmp(kind, "null")  ? UFAULT_NULL
			   : !strcmp(kind, "ud")    ? UFAULT_UD
			   : !strcmp(kind, "gp")    ? UFAULT_GP
			   : !strcmp(kind, "de")    ? UFAULT_DE
						    : 0;
	HV_ASSERT(ufault_params.kind != 0, "ufault: unknown kind '%s' (write|null|ud|gp|de)", kind);
	HV_ASSERT(ring == 0 || ring == 3, "ufault: ring must be 0 or 3");
	HV_ASSERT(!(ufault_params.kind == UFAULT_WRITE && ring == 0),
		  "ufault: kind=write needs ring=3 (ring 0 may write kernel pages)");
	ufault_params.target = (uint64_t)(uintptr_t)&kernel_only_word;
	hv_printf("ufault: kind=%s ring=%llu target=%p\n", kind, (unsigned long long)ring,
		  (void *)&kernel_only_word);
	if (ring == 3)
		hv_run_user(ufault_run, &ufault_params);
	else
		ufault_run(&ufault_params);
	hv_printf("ufault: no fault happened\n");
	return 1;
}
