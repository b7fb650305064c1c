/*
 * u_string.c - freestanding string functions. User-accessible (ring-3 code calls these, and gcc
 * may emit calls to the mem* ones). The mem* functions use rep string instructions: one
 * instruction per call for the emulated ring 0 of kvm_pvm.
 */
#include "hv.h"

void *memset(void *d, int c, size_t n)
{
	void *ret = d;

	if ((((uintptr_t)d | n) & 7) == 0) {
		uint64_t q = 0x0101010101010101ULL * (uint8_t)c;
		size_t cnt = n / 8;
		__asm__ volatile("rep stosq" : "+D"(d), "+c"(cnt) : "a"(q) : "memory");
	} else {
		__asm__ volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
	}
	return ret;
}

void *memcpy(void *__restrict d, const void *__restrict s, size_t n)
{
	void *ret = d;

	if ((((uintptr_t)d | (uintptr_t)s | n) & 7) == 0) {
		size_t cnt = n / 8;
		__asm__ volatile("rep movsq" : "+D"(d), "+S"(s), "+c"(cnt) : : "memory");
	} else {
		__asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
	}
	return ret;
}

void *memmove(void *d, const void *s, size_t n)
{
	unsigned char *dp = d;
	const unsigned char *sp = s;

	if (dp <= sp || dp >= sp + n)
		return memcpy(d, s, n);
	/* Overlapping, destination above: copy backwards. */
	dp += n - 1;
	sp += n - 1;
	__asm__ volatile("std; rep movsb; cld" : "+D"(dp), "+S"(sp), "+c"(n) : : "memory");
	return d;
}

int memcmp(const void *a, const void *b, size_t n)
{
	const unsigned char *x = a, *y = b;

	for (size_t i = 0; i < n; i++)
		if (x[i] != y[i])
			return x[i] - y[i];
	return 0;
}

size_t strlen(const char *s)
{
	size_t n = 0;

	while (s[n])
		n++;
	return n;
}

size_t strnlen(const char *s, size_t max)
{
	size_t n = 0;

	while (n < max && s[n])
		n++;
	return n;
}

int strcmp(const char *a, const char *b)
{
	while (*a && *a == *b)
		a++, b++;
	return (unsigned char)*a - (unsigned char)*b;
}

int strncmp(const char *a, const char *b, size_t n)
{
	for (; n; n--, a++, b++) {
		if (*a != *b)
			return (unsigned char)*a - (unsigned char)*b;
		if (!*a)
			return 0;
	}
	return 0;
}

char *strchr(const char *s, int c)
{
	for (;; s++) {
		if (*s == (char)c)
			return (char *)s;
		if (!*s)
			return 0;
	}
}

size_t hv_strlcpy(char *d, const char *s, size_t size)
{
	size_t len = strlen(s);

	if (size) {
		size_t n = len < size - 1 ? len : size - 1;
		memcpy(d, s, n);
		d[n] = 0;
	}
	return len;
}
