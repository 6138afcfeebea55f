/*
 * tenant — the one rule for tenant names, whatever names them (SPEC §3, §6): a JWT tenant
 * claim, a Redis key hash's `tenant`, `keys create --tenant` and `quota set`, the config's
 * tenants and static keys, a client certificate's CN. Tenant names go into Redis keys inside a
 * {hash tag}, metrics labels and JSON log lines, so the alphabet is small and needs no escaping:
 * [A-Za-z0-9._:@-], 1 to AOR_TENANT_NAME_MAX bytes. A name outside the rule is refused, never
 * cut or cleaned into another (possibly someone else's) name. Header only: pure, no I/O.
 */
#ifndef AOR_TENANT_H
#define AOR_TENANT_H

#include <stddef.h>

#define AOR_TENANT_NAME_MAX 128

/* 1 when the `len` bytes at `s` (need not be NUL-terminated; an embedded NUL fails) are a tenant name, else 0 */
static inline int aor_tenant_name_ok(const char *s, size_t len)
{
    size_t i;

    if (s == NULL || len < 1 || len > AOR_TENANT_NAME_MAX)
        return 0;
    for (i = 0; i != len; ++i) {
        char c = s[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == ':' ||
              c == '@' || c == '-'))
            return 0;
    }
    return 1;
}

#define AOR_TENANT_NAME_RULE "1 to 128 characters from A-Z a-z 0-9 . _ : @ -"

#endif
