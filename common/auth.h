#pragma once
/* Shared-secret authentication for every connection (DESIGN.md
 * "Operations"): a challenge-response inside Hello, HMAC-SHA256 from
 * libsodium, compared in constant time. The secret never crosses the wire.
 *
 *   client -> Hello{client_id, client_nonce Cn}
 *   server -> Hello{auth_challenge Sn}            (Sn: fresh 32 random bytes)
 *   client -> Hello{client_id, Cn, auth_response = HMAC(secret, tag|Sn|Cn|client_id)}
 *   server -> Hello{authenticated} or UNAUTHENTICATED, and closes
 *
 * Sn is per connection and good for one attempt, so a response recorded on
 * one connection is worth nothing on another (replay), and a connection gets
 * one guess. */

#include <stddef.h>
#include <stdint.h>

#define PS_AUTH_NONCE 32
#define PS_AUTH_MAC 32
#define PS_AUTH_SECRET_MIN 16
#define PS_AUTH_SECRET_MAX 4096

typedef struct ps_auth_secret {
    uint8_t key[PS_AUTH_SECRET_MAX];
    size_t len;                  /* 0 = no authentication configured */
} ps_auth_secret;

/* Read the secret (trailing whitespace dropped). PS_ECONFIG with a reason
 * for a secret shorter than PS_AUTH_SECRET_MIN bytes, -errno if unreadable.
 * An empty path leaves s->len = 0. */
int ps_auth_load(const char *path, ps_auth_secret *s, char *err, size_t errlen);
void ps_auth_wipe(ps_auth_secret *s);

void ps_auth_nonce(uint8_t out[PS_AUTH_NONCE]);
void ps_auth_mac(const ps_auth_secret *s, const uint8_t server_nonce[PS_AUTH_NONCE],
                 const uint8_t client_nonce[PS_AUTH_NONCE], uint64_t client_id,
                 uint8_t out[PS_AUTH_MAC]);
/* 1 if mac is right, in constant time; 0 otherwise. */
int ps_auth_check(const ps_auth_secret *s, const uint8_t server_nonce[PS_AUTH_NONCE],
                  const uint8_t client_nonce[PS_AUTH_NONCE], uint64_t client_id, const uint8_t *mac,
                  size_t mac_len);
