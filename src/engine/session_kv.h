/* session_kv.h — what a session's KV state costs per token of context (benchmark and
 * report figures; engine internals stay in engine_internal.h).
 *
 * Owns: ds4_session_kv_bytes_per_token. Must not: expose the state layout or be needed
 * by anything that runs the model.
 */
#ifndef DS4_SESSION_KV_H
#define DS4_SESSION_KV_H

#include "ds4.h"

/* Bytes of cached compressed rows per token of context: Σ over compressed layers of
 * (attention row bytes + indexer row bytes on CSA layers) / ratio, with the row sizes the
 * session stores (f32, or the backend's compact layout: backend.h kv_row_bytes). This is
 * how a snapshot or the session's KV memory grows with the context; the raw window ring and
 * the compressor rings have a fixed size, and the 4-byte token ids are not counted. */
double ds4_session_kv_bytes_per_token(const ds4_session *s);

#endif
