/* fuzz_acme.c: what the ACME client reads from the network on arbitrary bytes: a whole HTTP
 * answer from the CA (acme_http_parse: head, Replay-Nonce, Location, Retry-After, chunked or
 * sized body) and the ALPN list of a client hello (moat_acme_alpn_offered). The JSON inside
 * the answers is jansson's. */
#include <assert.h>
#include <stdint.h>
#include <string.h>

#include "acme/acme-http.h"
#include "acme/acme-int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct acme_resp r;
    char err[256];
    memset(&r, 0, sizeof r);
    if (acme_http_parse((const char *)data, size, size && (data[0] & 1), &r, err, sizeof err) ==
        MOAT_OK) {
        assert(r.status >= 100 && r.status <= 999);
        assert(r.body && r.blen <= size && r.body[r.blen] == '\0');
        assert(strlen(r.nonce) < sizeof r.nonce && strlen(r.location) < sizeof r.location);
    }
    acme_resp_clear(&r);

    atomic_store(&acme_store.alpn_pending, true);
    bool offered = moat_acme_alpn_offered(data, size);
    if (offered)
        assert(size >= 11);
    return 0;
}
