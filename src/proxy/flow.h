/* flow.h: a body on the wire: decoding its framing on the way in (Content-Length, chunked,
 * until close) zero-copy from an input buffer, and chunked framing on the way out. Used for
 * both the client's request body (h1conn.c) and the origin's response body (exchange.c). */
#ifndef MOAT_PROXY_FLOW_H
#define MOAT_PROXY_FLOW_H

#include "core/buf.h"
#include "core/transport.h"
#include "http/h1.h"

/* How a body is framed on the way in. */
enum moat_flow_mode {
    FLOW_NONE = 0, /* no body */
    FLOW_CL,       /* Content-Length bytes */
    FLOW_CHUNKED,  /* chunked coding */
    FLOW_EOF,      /* until the peer closes (responses; tunnels) */
};

struct moat_flow {
    enum moat_flow_mode mode;
    bool done;                  /* the payload is complete (trailers may still wait) */
    bool trailers;              /* FLOW_CHUNKED with dec.keep_trailers: in the trailer
                                   section, held in the input until it is whole */
    uint32_t tused;             /* the trailer section handed out: its bytes, with the final
                                   CRLF, to consume at moat_flow_end */
    uint64_t remaining;         /* FLOW_CL */
    struct moat_h1_chunked dec; /* FLOW_CHUNKED */
    uint32_t span;              /* payload bytes at the input's rpos handed out, not consumed */
    uint32_t skip_after;        /* framing bytes to consume after the span */
    uint64_t bytes;             /* payload bytes handed out */
    uint64_t limit;             /* max payload (limits.body_bytes on requests), 0 = none */
    uint32_t bigbuf;            /* a body larger than the head buffer: read it through a
                                   buffer of this size (limits.body_buffer), 0 = keep */
};

/* moat_flow_next's answers */
enum {
    FLOW_DATA = 0,    /* payload in *out, at the input's rpos */
    FLOW_MORE,        /* needs more input */
    FLOW_END,         /* complete: *out is the trailer section (maybe empty, inside the
                         input until moat_flow_end) */
    FLOW_ERR_FRAMING, /* bad chunk framing or trailers */
    FLOW_ERR_LIMIT,   /* more payload than f->limit */
    FLOW_ERR_TRUNC,   /* the input ended (<eof>) before the body did */
};

/* Decodes the next payload span of <f> from <in> (<eof>: no more bytes will come). Call it
 * only when the previous span was consumed whole (f->span == 0). Chunk framing before the
 * span is consumed here; the span and the framing after it by moat_flow_consume. */
int moat_flow_next(struct moat_flow *f, struct moat_buf *in, bool eof, struct moat_str *out);
/* <n> bytes of the span were passed on. */
void moat_flow_consume(struct moat_flow *f, struct moat_buf *in, uint32_t n);
/* After FLOW_END: drops the trailer section from <in> (pipelined bytes after it stay). */
void moat_flow_end(struct moat_flow *f, struct moat_buf *in);

/* One end of a connection as a body sees it: the socket and the bytes read from it and not
 * yet passed on. */
struct moat_side {
    struct moat_sock sk;
    struct moat_buf in;
};

/* Reads into <s>->in (compacting it when its end is full). Returns bytes read (>0), 0 at
 * EOF, MOAT_AGAIN (nothing now, or the buffer is full), or MOAT_ERR. */
ssize_t moat_side_read(struct moat_side *s);

/* Gives <b> a buffer of <size> bytes if it has none (or an empty one of another size). */
int moat_buf_ensure(struct moat_buf *b, uint32_t size);

/* Chunked framing on the way out. */
struct moat_chunk_out {
    bool pending_crlf; /* the CRLF after the last data is owed */
    bool fin_queued;   /* the last chunk is queued */
};

/* Queues framing for a chunk of <n> payload bytes (or, n == 0, the last chunk and the end of
 * the body) in <out>, which must have 32 bytes of room once compacted. */
void moat_chunk_frame(struct moat_chunk_out *o, struct moat_buf *out, uint64_t n);
/* Bytes the end of a chunked body with trailers adds to its section. */
#define MOAT_CHUNK_TRAILER_FRAMING 7
/* Queues the end of a chunked body carrying the trailer <section> in <out>: the CRLF owed,
 * the last chunk, the fields moat forwards (moat_fwd_trailers filters them) and the final
 * CRLF. <out> must have MOAT_CHUNK_TRAILER_FRAMING + section.len bytes of room once
 * compacted. */
void moat_chunk_trailers(struct moat_chunk_out *o, struct moat_buf *out, struct moat_str section);

/* headers.c: copies the lines of trailer <section> to <dst>, at most <room> bytes, leaving out
 * the fields a forwarded trailer must not carry (framing, hop-by-hop, before-the-content
 * fields: trailer_deny[] in headers.c) and any line that does not fit. Returns the bytes
 * written. */
size_t moat_fwd_trailers(struct moat_str section, char *dst, size_t room);

#endif
