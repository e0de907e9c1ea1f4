/* Packet-header decoding of one tile's packets in one call: a C port of the reference,
 * codestream/packets.py (BitReader, TagTree, PrecinctState.read_header) driven as in
 * codestream/index.py (_Builder._decode_in_python: headers in the tile-part data, or packed
 * in PPM/PPT marker segments with the bodies in the tile-part data).
 *
 * Why C: a file without PLT must have every packet header decoded to be indexed (2.1M packets
 * for a 16384² RGB image in 64² precincts), and the Python loop costs ~10 µs a packet. This
 * module is optional: without it (or with JPIP_PURE_PYTHON=1) the Python code does the same.
 * The semantics are the Python code's, error positions and messages included; the tests
 * compare both on every corpus file and on damaged variants (tests/codestream/test_native.py).
 *
 * Every header field is hostile: every byte read is checked against the tile-part's end (which
 * the caller checks against the buffer), lengths saturate instead of overflowing, and a
 * precinct whose code-block grid is too large for plain arrays makes the call return None (the
 * caller then decodes that tile in Python, which stores large tag trees sparsely).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <sys/mman.h>

/* Code-block style bits (T.800 Table A.19; 15444-15 for HT), as codestream/markers.py. */
#define CBLK_BYPASS 0x01
#define CBLK_TERMALL 0x04
#define CBLK_HT 0x40

#define INF_VALUE (1 << 30)   /* a tag-tree node whose value is not known yet */
/* Body lengths saturate here: far past any tile-part, so a huge claimed length is reported as
 * "runs past the tile-part" as in Python (whose integers do not overflow). */
#define BODY_CAP ((int64_t)1 << 62)
#define MAX_TREE_LEVELS 40

typedef struct {
    char msg[200];
    int64_t pos;
    int set;
} Error;

static int fail(Error *e, int64_t pos, const char *msg) {
    e->pos = pos;
    snprintf(e->msg, sizeof e->msg, "%s", msg);
    e->set = 1;
    return -1;
}

/* --- bits (B.10.1): 7 bits after a 0xFF byte ------------------------------------------- */
typedef struct {
    const uint8_t *buf;
    int64_t pos, end;
    unsigned byte, bits, last;
} Bits;

static int next_byte(Bits *b, Error *e) {
    if (b->pos >= b->end)
        return fail(e, b->pos, "packet header runs past the data");
    int stuffed = b->last == 0xFF;
    b->last = b->buf[b->pos++];
    if (stuffed) {
        b->byte = b->last & 0x7F;
        b->bits = 7;
    } else {
        b->byte = b->last;
        b->bits = 8;
    }
    return 0;
}

/* 0 or 1, or -1 with the error set. */
static inline int get_bit(Bits *b, Error *e) {
    if (b->bits == 0 && next_byte(b, e))
        return -1;
    b->bits--;
    return (b->byte >> b->bits) & 1;
}

/* n bits (n <= 72: Lblock <= 64 plus a pass count's bits), saturating at BODY_CAP. */
static int read_bits(Bits *b, int n, int64_t *out, Error *e) {
    uint64_t v = 0;
    int saturated = 0;
    while (n > 0) {
        if (b->bits == 0 && next_byte(b, e))
            return -1;
        unsigned take = (unsigned)n < b->bits ? (unsigned)n : b->bits;
        b->bits -= take;
        uint64_t chunk = (b->byte >> b->bits) & ((1u << take) - 1);
        if (v > ((uint64_t)BODY_CAP >> take))
            saturated = 1;
        else
            v = (v << take) | chunk;
        n -= take;
    }
    *out = saturated || v > (uint64_t)BODY_CAP ? BODY_CAP : (int64_t)v;
    return 0;
}

static int align_bits(Bits *b, Error *e, int64_t *hend) {
    b->bits = 0;
    if (b->last == 0xFF) {
        if (b->pos >= b->end)
            return fail(e, b->pos, "packet header ends on 0xFF at the end");
        b->pos++;
        b->last = 0;
    }
    *hend = b->pos;
    return 0;
}

/* --- tag trees (B.10.2) ------------------------------------------------------------------
 * Nodes level by level, leaves first. `value` holds INF_VALUE - value so that zeroed memory
 * (calloc: pages untouched until used) means "unknown"; memory then follows the bits read. */
typedef struct {
    int32_t *value_c;  /* INF_VALUE - value */
    int32_t *low;
    int64_t w;
    int levels;
    int64_t off[MAX_TREE_LEVELS], lw[MAX_TREE_LEVELS];
} Tree;

static int64_t tree_layout(Tree *t, int64_t w, int64_t h) {
    int64_t total = 0, lw = w, lh = h;
    int n = 0;
    for (;;) {
        if (n >= MAX_TREE_LEVELS)
            return -1;
        t->off[n] = total;
        t->lw[n] = lw;
        n++;
        total += lw * lh;
        if (lw * lh <= 1)
            break;
        lw = (lw + 1) >> 1;
        lh = (lh + 1) >> 1;
    }
    t->w = w;
    t->levels = n;
    return total;
}

/* -1: below threshold; >= 0: the level of the highest node known >= threshold; -2: error. */
static int tree_decode(Tree *t, Bits *b, int64_t leaf, int32_t threshold, Error *e) {
    int64_t x = leaf % t->w, y = leaf / t->w;
    int32_t low = 0;
    for (int lev = t->levels - 1; lev >= 0; lev--) {
        int64_t node = t->off[lev] + (y >> lev) * t->lw[lev] + (x >> lev);
        if (low > t->low[node])
            t->low[node] = low;
        else
            low = t->low[node];
        int32_t v = INF_VALUE - t->value_c[node];
        while (low < threshold && low < v) {
            int bit = get_bit(b, e);
            if (bit < 0)
                return -2;
            if (bit) {
                v = low;
                t->value_c[node] = INF_VALUE - v;
            } else {
                low++;
            }
        }
        t->low[node] = low;
        if (v >= threshold)
            return lev;
    }
    return -1;
}

/* The leaf's value read to the end (TagTree.value_of); -1 on error. */
static int tree_value_of(Tree *t, Bits *b, int64_t leaf, int32_t limit, Error *e) {
    int64_t x = leaf % t->w, y = leaf / t->w;
    int32_t low = 0;
    for (int lev = t->levels - 1; lev >= 0; lev--) {
        int64_t node = t->off[lev] + (y >> lev) * t->lw[lev] + (x >> lev);
        if (low < t->low[node])
            low = t->low[node];
        int32_t v = INF_VALUE - t->value_c[node];
        while (low < v) {
            int bit = get_bit(b, e);
            if (bit < 0)
                return -1;
            if (bit) {
                v = low;
                t->value_c[node] = INF_VALUE - v;
            } else {
                low++;
                if (low > limit)
                    return fail(e, b->pos, "zero bit-plane tag tree does not terminate");
            }
        }
        t->low[node] = low;
    }
    return 0;
}

/* --- precinct state (PrecinctState / BandState) ------------------------------------------ */
typedef struct {
    int32_t passes, segno, seg_passes, seg_max;
    uint8_t lblock, included;
} Block;

/* A run of code-blocks on a row under a tag-tree node known > layer (see read_band), kept at
 * its first column; valid in the packet whose stamp it carries. */
typedef struct {
    int64_t end, until;
    uint32_t stamp;
} Run;

typedef struct {
    int64_t cw, ch, count;
    Tree incl, zbp;
    Block *blocks;
    Run *runs;       /* cw of them */
    uint32_t stamp;  /* the packet being read: runs of earlier packets are stale */
} Band;

typedef struct {
    Band bands[3];
    int style;
    size_t bytes;     /* of its arrays, all in `mem` */
    void *mem;
    int mapped;       /* mem is an anonymous mapping, else from calloc */
} Precinct;

/* Zeroed memory for a precinct's arrays. Large grids get an anonymous mapping: its pages are
 * zeroed by the kernel when first touched, so a precinct whose packets touch a few nodes costs
 * those pages, not the grid (calloc memsets a block of that size once glibc has raised its
 * mmap threshold, which freeing a mapped block makes it do). */
#define MAP_MIN_BYTES ((size_t)1 << 18)

static void *zeroed(size_t size, int *mapped) {
    *mapped = 0;
#ifdef MAP_ANONYMOUS
    if (size >= MAP_MIN_BYTES) {
        void *m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED)
            return NULL;
        *mapped = 1;
        return m;
    }
#endif
    return calloc(1, size ? size : 1);
}

typedef struct {
    int32_t max_zero_bitplanes, max_passes, max_lblock;
    int64_t max_nodes;    /* per tag tree, beyond which the tile goes to Python */
    int64_t max_bytes;    /* all live precinct state of a call, likewise */
} Limits;

static void free_precinct(Precinct *p) {
    if (!p)
        return;
#ifdef MAP_ANONYMOUS
    if (p->mapped)
        munmap(p->mem, p->bytes);
    else
#endif
        free(p->mem);
    free(p);
}

/* A band's arrays, laid out in one block: runs (8-byte fields) first, then the trees' int32
 * arrays and the code-blocks, the whole rounded up to 8 bytes so that the next band's runs
 * are aligned. */
static size_t band_bytes(int64_t nodes, int64_t count, int64_t cw) {
    size_t n = (size_t)cw * sizeof(Run) + (size_t)nodes * 4 * sizeof(int32_t)
               + (size_t)count * sizeof(Block);
    return (n + 7) & ~(size_t)7;
}

static void place_band(Band *band, int64_t nodes, uint8_t *at) {
    band->runs = (Run *)at;
    at += (size_t)band->cw * sizeof(Run);
    int32_t **arrays[4] = {&band->incl.value_c, &band->incl.low, &band->zbp.value_c,
                           &band->zbp.low};
    for (int j = 0; j < 4; j++) {
        *arrays[j] = (int32_t *)at;
        at += (size_t)nodes * sizeof(int32_t);
    }
    band->blocks = (Block *)at;
}

/* NULL with *too_big set when the grids exceed the limits, NULL alone when out of memory. */
static Precinct *make_precinct(const int32_t *grid, int style, const Limits *lim,
                               int64_t *live, int *too_big) {
    Precinct *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->style = style;
    int64_t nodes[3] = {0, 0, 0};
    for (int i = 0; i < 3; i++) {
        Band *band = &p->bands[i];
        int64_t cw = grid[2 * i], ch = grid[2 * i + 1];
        if (cw < 0 || ch < 0) {  /* checked on entry, but the array may have changed since */
            *too_big = 1;
            free_precinct(p);
            return NULL;
        }
        band->cw = cw;
        band->ch = ch;
        band->count = cw * ch;
        if (band->count == 0)
            continue;
        int64_t a = tree_layout(&band->incl, cw, ch);
        int64_t z = tree_layout(&band->zbp, cw, ch);
        if (a < 0 || z < 0 || a > lim->max_nodes) {
            *too_big = 1;
            free_precinct(p);
            return NULL;
        }
        nodes[i] = a;
        p->bytes += band_bytes(a, band->count, cw);
        if (*live + (int64_t)p->bytes > lim->max_bytes) {
            *too_big = 1;
            free_precinct(p);
            return NULL;
        }
    }
    p->mem = zeroed(p->bytes, &p->mapped);
    if (!p->mem) {
        free_precinct(p);
        return NULL;
    }
    uint8_t *at = p->mem;
    for (int i = 0; i < 3; i++) {
        Band *band = &p->bands[i];
        if (band->count) {
            place_band(band, nodes[i], at);
            at += band_bytes(nodes[i], band->count, band->cw);
        }
    }
    *live += (int64_t)p->bytes;
    return p;
}

/* A precinct's state, made on its first non-empty packet (NULL as make_precinct). */
static Precinct *state_of(Precinct **states, int64_t r, const int32_t *grid,
                          const uint8_t *style_of, const Limits *lim, int64_t *live,
                          int *too_big) {
    if (!states[r])
        states[r] = make_precinct(grid + 6 * r, style_of[r], lim, live, too_big);
    return states[r];
}

static int num_passes(Bits *b, Error *e) {
    int bit = get_bit(b, e);
    if (bit <= 0)
        return bit < 0 ? -1 : 1;
    bit = get_bit(b, e);
    if (bit <= 0)
        return bit < 0 ? -1 : 2;
    int64_t v;
    if (read_bits(b, 2, &v, e))
        return -1;
    if (v != 3)
        return 3 + (int)v;
    if (read_bits(b, 5, &v, e))
        return -1;
    if (v != 31)
        return 6 + (int)v;
    if (read_bits(b, 7, &v, e))
        return -1;
    return 37 + (int)v;
}

/* How many passes codeword segment `segno` may hold (packets.py _segment_max). */
static int32_t segment_max(int style, int32_t segno, int32_t first_passes) {
    if (style & CBLK_HT) {
        if (segno == 0)
            return first_passes;
        return segno % 2 == 1 ? 2 : 1;
    }
    if (style & CBLK_TERMALL)
        return 1;
    if (style & CBLK_BYPASS) {
        if (segno == 0)
            return 10;
        return segno % 2 == 1 ? 2 : 1;
    }
    return 1 << 30;
}

static int bit_length(int32_t n) {
    int k = 0;
    while (n > 0) {
        k++;
        n >>= 1;
    }
    return k;
}

static int64_t add_cap(int64_t a, int64_t b) {
    return a >= BODY_CAP - b ? BODY_CAP : a + b;
}

/* The inclusion scan of packets.py's _read_band: code-blocks under a tag-tree node known
 * > layer are skipped a whole rectangle at a time, through runs recorded at the node's first
 * code-block, and a row made of runs only with the rows after it until one of its runs ends. */
static int read_band(Precinct *p, Band *band, Bits *b, int32_t layer, const Limits *lim,
                     int64_t *body, Error *e) {
    int style = p->style;
    int ht = (style & CBLK_HT) != 0;
    int one_segment = !(style & (CBLK_HT | CBLK_TERMALL | CBLK_BYPASS));
    int32_t threshold = layer + 1;
    int64_t cw = band->cw, ch = band->ch, y = 0;
    Run *runs = band->runs;
    uint32_t stamp = ++band->stamp;
    if (stamp == 0) {  /* wrapped around (2^32 packets): no run may look current */
        memset(runs, 0, (size_t)cw * sizeof *runs);
        stamp = band->stamp = 1;
    }
    int have_runs = 0;  /* a run was recorded in this packet */
    while (y < ch) {
        int64_t row = y * cw, row_end = row + cw, k = row;
        int64_t skip_to = ch;  /* where this row's first-ending run ends */
        int64_t covered = 0;   /* code-blocks of this row in runs */
        while (k < row_end) {
            if (have_runs) {
                int64_t x = k - row;
                Run *run = &runs[x];
                if (run->stamp == stamp && run->until > y) {
                    int64_t end = run->end, until = run->until;
                    while (end < cw && runs[end].stamp == stamp && runs[end].until == until)
                        end = runs[end].end;
                    run->end = end;
                    if (until < skip_to)
                        skip_to = until;
                    covered += end - x;
                    k = row + end;
                    continue;
                }
            }
            Block *s = &band->blocks[k];
            int first;
            if (s->included) {
                int bit = get_bit(b, e);
                if (bit < 0)
                    return -1;
                if (!bit) {
                    k++;
                    continue;
                }
                first = 0;
            } else {
                int level = tree_decode(&band->incl, b, k, threshold, e);
                if (level == -2)
                    return -1;
                if (level >= 0) {
                    if (level) {  /* a node above the leaf: skip its rectangle */
                        int64_t x = k - row;
                        int64_t end = ((x >> level) + 1) << level;
                        int64_t until = ((y >> level) + 1) << level;
                        if (until > y + 1 && y + 1 < ch) {
                            runs[x].end = end < cw ? end : cw;
                            runs[x].until = until < ch ? until : ch;
                            runs[x].stamp = stamp;
                            have_runs = 1;
                        }
                        k = row + end;  /* past row_end when the node reaches the edge */
                    } else {
                        k++;
                    }
                    continue;
                }
                if (tree_value_of(&band->zbp, b, k, lim->max_zero_bitplanes, e))
                    return -1;
                s->included = 1;
                s->lblock = 3;
                first = 1;
            }
            int n = num_passes(b, e);
            if (n < 0)
                return -1;
            s->passes += n;
            if (s->passes > lim->max_passes && !ht) {
                char msg[120];
                snprintf(msg, sizeof msg,
                         "a code-block with %d coding passes (at most %d can exist)",
                         (int)s->passes, (int)lim->max_passes);
                return fail(e, b->pos, msg);
            }
            for (;;) { /* Lblock increment, a comma code */
                int bit = get_bit(b, e);
                if (bit < 0)
                    return -1;
                if (!bit)
                    break;
                s->lblock++;
                if (s->lblock > lim->max_lblock)
                    return fail(e, b->pos, "Lblock grows without bound");
            }
            int64_t v;
            if (one_segment) {
                if (read_bits(b, s->lblock + bit_length(n) - 1, &v, e))
                    return -1;
                *body = add_cap(*body, v);
                k++;
                continue;
            }
            if (first) {
                s->seg_max = segment_max(style, 0, ht ? 1 + 3 * ((n - 1) / 3) : 0);
            } else if (s->seg_passes >= s->seg_max) {
                s->segno++;
                s->seg_passes = 0;
                s->seg_max = segment_max(style, s->segno, 0);
            }
            while (n > 0) {
                int32_t room = s->seg_max - s->seg_passes;
                int32_t take = room < n ? room : n;
                if (read_bits(b, s->lblock + bit_length(take) - 1, &v, e))
                    return -1;
                *body = add_cap(*body, v);
                s->seg_passes += take;
                n -= take;
                if (n > 0) {
                    s->segno++;
                    s->seg_passes = 0;
                    s->seg_max = segment_max(style, s->segno, 0);
                }
            }
            k++;
        }
        y = covered == cw ? skip_to : y + 1;
    }
    return 0;
}

/* PrecinctState.read_header for a non-empty first bit already known or not. */
static int read_header(Precinct *p, Bits *b, int32_t layer, const Limits *lim, int64_t *body,
                       Error *e) {
    *body = 0;
    int bit = get_bit(b, e);
    if (bit <= 0)
        return bit;  /* an empty packet, or an error */
    for (int i = 0; i < 3; i++) {
        if (p->bands[i].count && read_band(p, &p->bands[i], b, layer, lim, body, e))
            return -1;
    }
    return 0;
}

static int after_eph(const uint8_t *buf, int64_t pos, int64_t end, long tile, int64_t *out,
                     Error *e) {
    if (pos + 2 > end || buf[pos] != 0xFF || buf[pos + 1] != 0x92) {
        char msg[120];
        snprintf(msg, sizeof msg, "tile %ld: packet header not followed by EPH (COD announces "
                 "EPH markers)", tile);
        return fail(e, pos, msg);
    }
    *out = pos + 2;
    return 0;
}

static int check_buffer(Py_buffer *v, Py_ssize_t itemsize, Py_ssize_t count, const char *name) {
    if (v->len < itemsize * count) {
        PyErr_Format(PyExc_ValueError, "%s: %zd bytes, %zd needed", name, v->len,
                     itemsize * count);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(decode_tile_doc,
"decode_tile(buf, parts, packed, rows, layers, grids, styles, last_layer, sop, eph, tile,\n"
"            pause, decoded, limits, offsets, lengths, header_lengths, packed_offsets, sops)\n"
"\n"
"Decodes the packet headers of one tile, in the order of `rows` (precinct numbers 0..n-1)\n"
"and `layers`: from its tile-parts' data (`parts`: header_end, data_end, sot_offset each), or\n"
"from `packed` (its PPM/PPT headers; None: not packed); fills the output arrays (the\n"
"packed offsets are positions in `packed`, -1 when not packed); returns (count, pos, end,\n"
"part_no, error) with error None or (position, message), or None when a precinct's grid is\n"
"beyond `limits` (the caller decodes the tile in Python).");

static PyObject *decode_tile(PyObject *self, PyObject *args) {
    Py_buffer buf = {0}, parts = {0}, rows = {0}, layers = {0}, grids = {0}, styles = {0};
    Py_buffer o_off = {0}, o_len = {0}, o_hlen = {0}, o_poff = {0}, o_sop = {0};
    Py_buffer packed = {0};
    PyObject *packed_obj;
    int last_layer, use_sop, eph;
    long tile;
    PyObject *pause;
    long long decoded;
    int max_zbp, max_passes, max_lblock;
    long long max_nodes, max_bytes;
    if (!PyArg_ParseTuple(args, "y*y*Oy*y*y*y*ippl" "OL(iiiLL)w*w*w*w*w*", &buf, &parts,
                          &packed_obj, &rows, &layers, &grids, &styles, &last_layer, &use_sop,
                          &eph, &tile, &pause, &decoded, &max_zbp, &max_passes, &max_lblock,
                          &max_nodes, &max_bytes, &o_off, &o_len, &o_hlen, &o_poff, &o_sop))
        return NULL;
    int is_packed = packed_obj != Py_None;
    if (is_packed && PyObject_GetBuffer(packed_obj, &packed, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&buf); PyBuffer_Release(&parts); PyBuffer_Release(&rows);
        PyBuffer_Release(&layers); PyBuffer_Release(&grids); PyBuffer_Release(&styles);
        PyBuffer_Release(&o_off); PyBuffer_Release(&o_len); PyBuffer_Release(&o_hlen);
        PyBuffer_Release(&o_poff); PyBuffer_Release(&o_sop);
        return NULL;
    }
    PyObject *result = NULL;
    Precinct **states = NULL;
    Py_ssize_t npackets = rows.len / 8, nprec = styles.len, nparts = parts.len / 24;
    const uint8_t *data = buf.buf;
    const int64_t *row = rows.buf;
    int64_t *part = NULL;  /* a private copy: the tile-part bounds are checked once */
    const int32_t *layer_of = layers.buf, *grid = grids.buf;
    const uint8_t *style_of = styles.buf;
    int64_t *out_off = o_off.buf, *out_len = o_len.buf, *out_hlen = o_hlen.buf;
    int64_t *out_poff = o_poff.buf;
    const uint8_t *pk = packed.buf;
    int64_t pk_len = is_packed ? packed.len : 0, hpos = 0;
    uint8_t *out_sop = o_sop.buf;
    Limits lim = {max_zbp, max_passes, max_lblock, max_nodes, max_bytes};
    /* Lblock is a uint8_t and read_bits' fields are at most 64 + 8 bits long. A band's
     * bytes (band_bytes: under 64 per node) and their sum with `live` must not overflow. */
    if (max_zbp < 0 || max_passes < 0 || max_lblock < 3 || max_lblock > 64 || max_nodes < 0
        || max_nodes > ((long long)1 << 40) || max_bytes < 0 || max_bytes > ((long long)1 << 60)) {
        PyErr_SetString(PyExc_ValueError, "limits: out of range");
        goto done;
    }

    if (check_buffer(&layers, 4, npackets, "layers") || check_buffer(&grids, 24, nprec, "grids")
        || check_buffer(&o_off, 8, npackets, "offsets") || check_buffer(&o_len, 8, npackets,
        "lengths") || check_buffer(&o_hlen, 8, npackets, "header_lengths")
        || check_buffer(&o_poff, 8, npackets, "packed_offsets")
        || check_buffer(&o_sop, 1, npackets, "sops"))
        goto done;
    if (nparts < 1) {
        PyErr_SetString(PyExc_ValueError, "parts: no tile-part");
        goto done;
    }
    part = malloc((size_t)nparts * 3 * sizeof *part);
    if (!part) {
        PyErr_NoMemory();
        goto done;
    }
    memcpy(part, parts.buf, (size_t)nparts * 3 * sizeof *part);
    for (Py_ssize_t i = 0; i < nparts; i++) {
        if (part[3 * i] < 0 || part[3 * i] > part[3 * i + 1] || part[3 * i + 1] > buf.len) {
            PyErr_SetString(PyExc_ValueError, "parts: a tile-part outside the buffer");
            goto done;
        }
    }
    for (Py_ssize_t i = 0; i < npackets; i++) {
        if (row[i] < 0 || row[i] >= nprec || layer_of[i] < 0 || layer_of[i] >= (1 << 30)) {
            PyErr_SetString(PyExc_ValueError, "rows/layers: out of range");
            goto done;
        }
    }
    for (Py_ssize_t i = 0; i < 6 * nprec; i++) {
        if (grid[i] < 0) {
            PyErr_SetString(PyExc_ValueError, "grids: a negative size");
            goto done;
        }
    }
    states = calloc(nprec ? (size_t)nprec : 1, sizeof *states);
    if (!states) {
        PyErr_NoMemory();
        goto done;
    }

    Error err = {{0}, 0, 0};
    int too_big = 0, no_memory = 0, changed = 0;
    int64_t live = 0;
    Py_ssize_t part_no = 0, count = 0;
    int64_t pos = part[0], end = part[1];
    int has_pause = pause != Py_None;
    /* The GIL is released while decoding, taken back to call `pause` (every 4096 packets, as
     * the Python loop): other threads (the server's requests) run meanwhile. */
    PyThreadState *ts = PyEval_SaveThread();
    for (Py_ssize_t i = 0; i < npackets; i++) {
        /* Each packet's precinct and layer are read once, and checked again: an output array
         * may alias an input one (out_off[i] overwrites row[i] in this very iteration), and
         * the arrays are not ours while the GIL is released. */
        int64_t r = row[i];
        int32_t layer = layer_of[i];
        if (r < 0 || r >= nprec || layer < 0 || layer >= (1 << 30)) {
            changed = 1;
            break;
        }
        if (has_pause && !((decoded + count) & 4095)) {
            PyEval_RestoreThread(ts);
            PyObject *res = PyObject_CallNoArgs(pause);
            if (!res)
                goto done;
            Py_DECREF(res);
            ts = PyEval_SaveThread();
        }
        while (pos >= end && part_no + 1 < nparts) {
            part_no++;
            pos = part[3 * part_no];
            end = part[3 * part_no + 1];
        }
        if (pos >= end && !is_packed)
            break;  /* the tile's data ends here: later packets are absent */
        if (is_packed && hpos >= pk_len)
            break;
        uint8_t sop = 0;
        if (use_sop && pos + 6 <= end && data[pos] == 0xFF && data[pos + 1] == 0x91) {
            sop = 1;
            pos += 6;
        }
        int64_t hend, body = 0;
        if (!is_packed && pos < end && data[pos] < 0x80) {
            /* An empty packet: one zero bit padded to the byte; no precinct state needed. */
            hend = pos + 1;
            if (eph && after_eph(data, pos + 1, end, tile, &hend, &err))
                break;
        } else {
            /* The header in place, or from the packed stream (PPM/PPT); the body always
             * from the tile-part: in place after the header, else at `pos`. */
            const uint8_t *hbuf = is_packed ? pk : data;
            int64_t hstart = is_packed ? hpos : pos, hlimit = is_packed ? pk_len : end;
            Precinct *p = state_of(states, r, grid, style_of, &lim, &live, &too_big);
            if (!p) {
                no_memory = !too_big;
                break;
            }
            Bits b = {hbuf, hstart, hlimit, 0, 0, 0};
            if (read_header(p, &b, layer, &lim, &body, &err) < 0)
                break;
            if (align_bits(&b, &err, &hend))
                break;
            if (eph && after_eph(hbuf, hend, hlimit, tile, &hend, &err)) {
                if (is_packed)
                    err.pos = part[3 * part_no + 2];  /* named by its tile-part's SOT */
                break;
            }
            if ((is_packed ? pos : hend) + body > end) {
                char msg[80];
                snprintf(msg, sizeof msg, "tile %ld: packet body runs past the tile-part", tile);
                fail(&err, pos, msg);
                break;
            }
        }
        out_sop[count] = sop;
        out_off[count] = pos;
        if (is_packed) {
            out_len[count] = body;
            out_hlen[count] = hend - hpos;
            out_poff[count] = hpos;
            hpos = hend;
            pos += body;
        } else {
            out_hlen[count] = hend - pos;
            out_len[count] = hend - pos + body;
            out_poff[count] = -1;
            pos = hend + body;
        }
        count++;
        if (layer == last_layer && states[r]) {
            live -= (int64_t)states[r]->bytes;  /* the precinct's last packet */
            free_precinct(states[r]);
            states[r] = NULL;
        }
    }
    PyEval_RestoreThread(ts);
    if (changed) {
        PyErr_SetString(PyExc_ValueError, "rows/layers: changed during the call");
    } else if (no_memory) {
        PyErr_NoMemory();
    } else if (too_big) {
        result = Py_NewRef(Py_None);
    } else if (err.set) {
        /* A packet that fails is counted, as in Python (whose count is then discarded). */
        result = Py_BuildValue("(nLLn(Ls))", count, (long long)pos, (long long)end, part_no,
                               (long long)err.pos, err.msg);
    } else {
        result = Py_BuildValue("(nLLnO)", count, (long long)pos, (long long)end, part_no,
                               Py_None);
    }

done:
    if (states) {
        for (Py_ssize_t i = 0; i < nprec; i++)
            free_precinct(states[i]);
        free(states);
    }
    free(part);
    PyBuffer_Release(&buf);
    PyBuffer_Release(&parts);
    PyBuffer_Release(&rows);
    PyBuffer_Release(&layers);
    PyBuffer_Release(&grids);
    PyBuffer_Release(&styles);
    PyBuffer_Release(&o_off);
    PyBuffer_Release(&o_len);
    PyBuffer_Release(&o_hlen);
    PyBuffer_Release(&o_poff);
    PyBuffer_Release(&o_sop);
    if (is_packed)
        PyBuffer_Release(&packed);
    return result;
}

static PyMethodDef methods[] = {
    {"decode_tile", decode_tile, METH_VARARGS, decode_tile_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "codestream._headers",
    "Packet-header decoding in C (the reference is codestream/packets.py).", -1, methods,
};

PyMODINIT_FUNC PyInit__headers(void) {
    return PyModule_Create(&module);
}
