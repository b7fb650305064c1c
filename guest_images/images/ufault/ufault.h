#ifndef UFAULT_H
#define UFAULT_H
#include "hv.h"

enum { UFAULT_WRITE = 1, UFAULT_NULL, UFAULT_UD, UFAULT_GP, UFAULT_DE };

struct ufault_params {
	uint32_t kind;
	uint64_t target;
};

extern struct ufault_params ufault_params; /* user-accessible (u_ufault.c) */
int ufault_run(void *params);

#endif
