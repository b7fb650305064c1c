/*
 * u_cmdline.c - `key=value` command-line helpers over the copy in hv_boot. User-accessible.
 */
#include "rt.h"

struct hv_boot_info hv_boot;

const char *hv_cmdline(void)
{
	return hv_boot.cmdline;
}

/* Find the last word `key` or `key=...`; returns the value start (or the word end for a bare key)
 * and its length. */
static const char *find_arg(const char *key, size_t *vlen)
{
	const char *s = hv_boot.cmdline, *found = 0;
	size_t klen = strlen(key);

	if (!klen || strchr(key, '=') || strchr(key, ' '))
		return 0; /* not a key */
	while (*s) {
		const char *w, *e;

		while (*s == ' ' || *s == '\t' || *s == '\n')
			s++;
		if (!*s)
			break;
		w = s;
		while (*s && *s != ' ' && *s != '\t' && *s != '\n')
			s++;
		e = s;
		if ((size_t)(e - w) >= klen && !strncmp(w, key, klen) &&
		    (w + klen == e || w[klen] == '=')) {
			found = w + klen == e ? e : w + klen + 1;
			*vlen = (size_t)(e - found);
		}
	}
	return found;
}

bool hv_arg(const char *key, char *buf, size_t size)
{
	size_t vlen;
	const char *v = find_arg(key, &vlen);

	if (!v)
		return false;
	if (size) {
		size_t n = vlen < size - 1 ? vlen : size - 1;
		memcpy(buf, v, n);
		buf[n] = 0;
	}
	return true;
}

bool hv_arg_present(const char *key)
{
	size_t vlen;

	return find_arg(key, &vlen) != 0;
}

bool hv_arg_is(const char *key, const char *value)
{
	size_t vlen;
	const char *v = find_arg(key, &vlen);

	return v && vlen == strlen(value) && !strncmp(v, value, vlen);
}

bool hv_parse_u64(const char *s, uint64_t *out)
{
	unsigned base = 10;
	uint64_t v = 0;
	bool any = false;

	if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X'))
		base = 16, s += 2;
	else if (s[0] == '0' && (s[1] == 'b' || s[1] == 'B'))
		base = 2, s += 2;
	for (;; s++) {
		unsigned d;
		if (*s >= '0' && *s <= '9')
			d = (unsigned)(*s - '0');
		else if (*s >= 'a' && *s <= 'f')
			d = (unsigned)(*s - 'a' + 10);
		else if (*s >= 'A' && *s <= 'F')
			d = (unsigned)(*s - 'A' + 10);
		else
			break;
		if (d >= base)
			break;
		v = v * base + d;
		any = true;
	}
	if (!any)
		return false;
	switch (*s) {
	case 'k': case 'K': v <<= 10; s++; break;
	case 'm': case 'M': v <<= 20; s++; break;
	case 'g': case 'G': v <<= 30; s++; break;
	}
	if (*s)
		return false;
	*out = v;
	return true;
}

uint64_t hv_arg_u64(const char *key, uint64_t def)
{
	char buf[32];
	uint64_t v;

	if (!hv_arg(key, buf, sizeof(buf)) || !hv_parse_u64(buf, &v))
		return def;
	return v;
}
