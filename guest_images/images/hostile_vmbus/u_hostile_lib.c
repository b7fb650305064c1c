/*
 * u_hostile_lib.c - the user-accessible half shared by the hostile images (see hostile.h).
 */
#include "hostile.h"

uint8_t hostile_user_page[2 * HVR_PAGE_SIZE] __attribute__((aligned(HVR_PAGE_SIZE)));

uint64_t hostile_rand(uint64_t *state)
{
	uint64_t x = (*state += 0x9e3779b97f4a7c15ULL);

	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}
