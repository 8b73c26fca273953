/* session_fill.h — a session at a long context without prefilling it (benchmarks only).
 *
 * Owns: ds4_session_fill_synthetic, which puts a session in the state of having
 * evaluated n given tokens, with every KV row (raw ring, compressed rows, compressor
 * rings, indexer rows) filled with seeded random values instead of computed ones. A
 * decode step after it does the same work as after a real prefill of n tokens (the same
 * row counts in attention, the indexer and its top-k), so decode speed at 128k or 1M
 * context can be measured without minutes of prefill. Must not: be used where the
 * model's outputs matter (the state is not the model's); be reachable from a request.
 */
#ifndef DS4_SESSION_FILL_H
#define DS4_SESSION_FILL_H

#include <stddef.h>
#include <stdint.h>

#include "ds4.h"

/* tokens[0..n): the timeline (validated like ds4_session_sync's); 1 <= n <= the
 * session's context. Afterwards ds4_session_n_tokens(s) == n and no logits are held, so
 * ds4_session_sync(s, tokens, n, ...) evaluates only the last token (within the rewind
 * window) and a longer sync continues from there. Returns 0 or a negative status
 * (DS4_ERR_ARG for bad tokens or n, DS4_ERR_NOMEM). */
int ds4_session_fill_synthetic(ds4_session *s, const int32_t *tokens, int n, uint64_t seed, char *err, size_t errlen);

#endif
