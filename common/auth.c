#include "auth.h"

#include <errno.h>
#include <sodium.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "error.h"

static const char tag[] = "ctrps-auth-v1";

static void init_once(void) {
    /* sodium_init() is idempotent and thread-safe; < 0 means no entropy. */
    if (sodium_init() < 0)
        abort();
}

int ps_auth_load(const char *path, ps_auth_secret *s, char *err, size_t errlen) {
    memset(s, 0, sizeof(*s));
    if (!path || !*path)
        return 0;
    init_once();
    FILE *f = fopen(path, "rb");
    if (!f) {
        int e = errno;
        snprintf(err, errlen, "auth_secret_file %s: %s", path, strerror(e));
        return -e;
    }
    size_t n = fread(s->key, 1, sizeof(s->key), f);
    bool more = fgetc(f) != EOF;
    fclose(f);
    while (n > 0 && (s->key[n - 1] == '\n' || s->key[n - 1] == '\r' || s->key[n - 1] == ' ' ||
                     s->key[n - 1] == '\t'))
        n--;
    if (more || n < PS_AUTH_SECRET_MIN) {
        sodium_memzero(s->key, sizeof(s->key));
        snprintf(err, errlen, "auth_secret_file %s: the secret must be %d to %d bytes", path,
                 PS_AUTH_SECRET_MIN, PS_AUTH_SECRET_MAX);
        return PS_ECONFIG;
    }
    s->len = n;
    return 0;
}

void ps_auth_wipe(ps_auth_secret *s) { sodium_memzero(s, sizeof(*s)); }

void ps_auth_nonce(uint8_t out[PS_AUTH_NONCE]) {
    init_once();
    randombytes_buf(out, PS_AUTH_NONCE);
}

void ps_auth_mac(const ps_auth_secret *s, const uint8_t server_nonce[PS_AUTH_NONCE],
                 const uint8_t client_nonce[PS_AUTH_NONCE], uint64_t client_id,
                 uint8_t out[PS_AUTH_MAC]) {
    crypto_auth_hmacsha256_state st;
    uint8_t id[8];
    for (int i = 0; i < 8; i++)
        id[i] = (uint8_t)(client_id >> (8 * i));
    crypto_auth_hmacsha256_init(&st, s->key, s->len);
    crypto_auth_hmacsha256_update(&st, (const uint8_t *)tag, sizeof(tag) - 1);
    crypto_auth_hmacsha256_update(&st, server_nonce, PS_AUTH_NONCE);
    crypto_auth_hmacsha256_update(&st, client_nonce, PS_AUTH_NONCE);
    crypto_auth_hmacsha256_update(&st, id, sizeof(id));
    crypto_auth_hmacsha256_final(&st, out);
    sodium_memzero(&st, sizeof(st));
}

int ps_auth_check(const ps_auth_secret *s, const uint8_t server_nonce[PS_AUTH_NONCE],
                  const uint8_t client_nonce[PS_AUTH_NONCE], uint64_t client_id, const uint8_t *mac,
                  size_t mac_len) {
    if (!s->len || mac_len != PS_AUTH_MAC)
        return 0;
    uint8_t want[PS_AUTH_MAC];
    ps_auth_mac(s, server_nonce, client_nonce, client_id, want);
    int ok = crypto_verify_32(want, mac) == 0;
    sodium_memzero(want, sizeof(want));
    return ok;
}
