/*
 * daxkit._parity -- the parity layer's store path in one call (SPEC 4.2), daxkit's second piece
 * of native code, for the second job that measurement showed needs it.
 *
 * Theory of operation
 *   A store to a parity-protected page must read the old page and the group's parity page
 *   (machine-check-safe), check the old page against its CRC32C (parity ^= old must not take
 *   silent corruption into parity), compute parity ^= old ^ new and the new page's CRC32C, and
 *   store data, parity and CRC under the "update in flight" word.  Done in Python, each of those
 *   steps is a call costing more than the arithmetic it does: a 4 KiB store cost ~10x a plain one.
 *   Here they are one call.  The arithmetic is not ours: CRC32C and the XOR of pages come from
 *   Intel's ISA-L (libisal's crc32_iscsi), the library made for that job; the XOR is a plain loop
 *   the compiler vectorises (ISA-L's xor_gen wants 32-byte aligned sources, which a caller's
 *   buffer need not be).  Every load
 *   from the device is the machine-check-safe copy of daxkit._copymc, borrowed through its
 *   capsule, so poison (real or emulated) is met as a failed copy, never a signal.
 *
 *   The caller passes a direct_access view of the whole lower device, taken while no error was
 *   known there, and byte offsets into it (a group's data pages, its parity page, its CRCs);
 *   this module knows nothing else of layouts.  Parity comes from the pages replaced
 *   (read-modify-write) or from the pages kept (reconstruct-write), whichever reads less.  Every load
 *   comes first: a fault or a CRC that does not match returns a negative code with nothing
 *   stored, and the caller takes its careful path, which finds out what is wrong and repairs it.
 *   Only pages whose loads succeeded are stored to (an emulated page with latent poison faults on
 *   stores too), in the order the careful path uses: the in-flight word, data, parity, CRCs, and
 *   the word cleared.  A compiler barrier between them keeps that order for a kill at any instant.
 *   Each new page goes to the medium in one pass that also folds it into parity, its CRC taken
 *   just before while the source is in cache; pages that were not read (reconstruct-write, a
 *   whole group) are streamed with non-temporal stores as the pmem driver's memcpy_flushcache
 *   does -- a plain store that misses first reads the line it replaces -- and fenced before
 *   parity is stored.
 *
 *   PageStore is the parity device's store of one page as one call from the caller: the
 *   device's lock (never waited for here), a view that is current (the lower device's state
 *   word), no update in flight and the group not dirty (both read from the medium), update().
 *   At ~1 us a page, the Python steps around it cost as much as the store itself.
 *
 * Rules: pure mechanism; every argument is checked against the view before anything is touched.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <isa-l/crc.h>
#include <stdint.h>
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#define PAGE 4096
#define MAX_GROUP 4096
#define FAULT -1
#define MISMATCH -2
#define DECLINED -4
#define GIL_THRESHOLD (256 * 1024)

typedef size_t (*mc_copy_fn)(char *dst, const char *src, size_t n);
static mc_copy_fn mc_copy;

#define BARRIER() __asm__ __volatile__("" ::: "memory")

static uint32_t crc32c(const unsigned char *p, size_t n)
{
    /* ISA-L's iSCSI CRC is CRC32C without the final inversion; the table holds the usual form. */
    return ~crc32_iscsi((unsigned char *)p, (int)n, 0xFFFFFFFFu);
}

struct scratch {
    unsigned char old[PAGE] __attribute__((aligned(64)));
    unsigned char pad[256]; /* old and par not 4 KiB apart: no false store-to-load aliasing */
    unsigned char par[PAGE] __attribute__((aligned(64)));
    uint32_t want[MAX_GROUP];
    uint32_t crcs[MAX_GROUP];
};

static __thread struct scratch *tls_scratch;

static struct scratch *scratch(void)
{
    if (!tls_scratch && posix_memalign((void **)&tls_scratch, 64, sizeof(struct scratch)) != 0) {
        tls_scratch = NULL;
        PyErr_NoMemory();
    }
    return tls_scratch;
}

/* dst ^= src over one page (unaligned loads; the compiler vectorises the loop). */
static void xor_into_generic(unsigned char *restrict dst, const unsigned char *restrict src)
{
    for (size_t i = 0; i < PAGE; i += 8) {
        uint64_t a, b;
        memcpy(&a, dst + i, 8);
        memcpy(&b, src + i, 8);
        a ^= b;
        memcpy(dst + i, &a, 8);
    }
}

#if defined(__x86_64__)
__attribute__((target("avx2"))) static void xor_into_avx2(unsigned char *restrict dst, const unsigned char *restrict src)
{
    for (size_t i = 0; i < PAGE; i += 64) {
        __m256i *x = (__m256i *)(dst + i);
        _mm256_store_si256(x, _mm256_xor_si256(_mm256_load_si256(x), _mm256_loadu_si256((const __m256i *)(src + i))));
        _mm256_store_si256(x + 1, _mm256_xor_si256(_mm256_load_si256(x + 1),
                                                   _mm256_loadu_si256((const __m256i *)(src + i + 32))));
    }
}
#endif

/* One new page onto the medium in one pass: acc ^= src, dst = src.  stream: non-temporal
 * stores (the pmem driver's memcpy_flushcache), for a page that is not in cache -- a store that
 * misses would first read the line it replaces; a page just read (read-modify-write) is in
 * cache and takes plain stores. */
#if defined(__x86_64__)
__attribute__((target("avx2"))) static void put_page_avx2(unsigned char *restrict dst, const unsigned char *restrict src,
                                                          unsigned char *restrict acc, int stream)
{
    for (size_t i = 0; i < PAGE; i += 64) {
        __m256i a = _mm256_loadu_si256((const __m256i *)(src + i));
        __m256i b = _mm256_loadu_si256((const __m256i *)(src + i + 32));
        __m256i *x = (__m256i *)(acc + i);
        _mm256_store_si256(x, _mm256_xor_si256(_mm256_load_si256(x), a));
        _mm256_store_si256(x + 1, _mm256_xor_si256(_mm256_load_si256(x + 1), b));
        if (stream) {
            _mm256_stream_si256((__m256i *)(dst + i), a);
            _mm256_stream_si256((__m256i *)(dst + i + 32), b);
        } else {
            _mm256_storeu_si256((__m256i *)(dst + i), a);
            _mm256_storeu_si256((__m256i *)(dst + i + 32), b);
        }
    }
}

static void put_page_sse2(unsigned char *restrict dst, const unsigned char *restrict src, unsigned char *restrict acc,
                          int stream)
{
    for (size_t i = 0; i < PAGE; i += 32) {
        __m128i a = _mm_loadu_si128((const __m128i *)(src + i));
        __m128i b = _mm_loadu_si128((const __m128i *)(src + i + 16));
        __m128i *x = (__m128i *)(acc + i);
        _mm_store_si128(x, _mm_xor_si128(_mm_load_si128(x), a));
        _mm_store_si128(x + 1, _mm_xor_si128(_mm_load_si128(x + 1), b));
        if (stream) {
            _mm_stream_si128((__m128i *)(dst + i), a);
            _mm_stream_si128((__m128i *)(dst + i + 16), b);
        } else {
            _mm_storeu_si128((__m128i *)(dst + i), a);
            _mm_storeu_si128((__m128i *)(dst + i + 16), b);
        }
    }
}

__attribute__((target("avx2"))) static void xor3_avx2(unsigned char *restrict dst, const unsigned char *a,
                                                      const unsigned char *b, const unsigned char *c)
{
    for (size_t i = 0; i < PAGE; i += 32) {
        __m256i x = _mm256_xor_si256(_mm256_load_si256((const __m256i *)(a + i)), _mm256_load_si256((const __m256i *)(b + i)));
        _mm256_storeu_si256((__m256i *)(dst + i), _mm256_xor_si256(x, _mm256_loadu_si256((const __m256i *)(c + i))));
    }
}

static int have_avx2;

/* dst (64-byte aligned: the scratch pages) ^= src over one page. */
static void xor_into(unsigned char *restrict dst, const unsigned char *restrict src)
{
    if (have_avx2)
        xor_into_avx2(dst, src);
    else
        xor_into_generic(dst, src);
}

static void put_page(unsigned char *dst, const unsigned char *src, unsigned char *acc, int stream)
{
    if (have_avx2)
        put_page_avx2(dst, src, acc, stream);
    else
        put_page_sse2(dst, src, acc, stream);
}

/* dst = a ^ b ^ c over one page (a and b: the 64-byte aligned scratch pages). */
static void xor3(unsigned char *restrict dst, const unsigned char *a, const unsigned char *b, const unsigned char *c)
{
    if (have_avx2) {
        xor3_avx2(dst, a, b, c);
        return;
    }
    for (size_t i = 0; i < PAGE; i += 16) {
        __m128i x = _mm_xor_si128(_mm_load_si128((const __m128i *)(a + i)), _mm_load_si128((const __m128i *)(b + i)));
        _mm_storeu_si128((__m128i *)(dst + i), _mm_xor_si128(x, _mm_loadu_si128((const __m128i *)(c + i))));
    }
}

#define STORE_FENCE() _mm_sfence()
#else
#define xor_into xor_into_generic

static void xor3(unsigned char *restrict dst, const unsigned char *a, const unsigned char *b, const unsigned char *c)
{
    for (size_t i = 0; i < PAGE; i += 8) {
        uint64_t x, y, z;
        memcpy(&x, a + i, 8);
        memcpy(&y, b + i, 8);
        memcpy(&z, c + i, 8);
        x ^= y ^ z;
        memcpy(dst + i, &x, 8);
    }
}

static void put_page(unsigned char *dst, const unsigned char *src, unsigned char *acc, int stream)
{
    xor_into(acc, src);
    memcpy(dst, src, PAGE);
}

#define STORE_FENCE() __atomic_thread_fence(__ATOMIC_SEQ_CST)
#endif

static int in_view(Py_ssize_t off, Py_ssize_t n, Py_ssize_t len)
{
    return off >= 0 && n >= 0 && off <= len - n;
}

/* A page of the medium into t->old (machine-check-safe), checked against its CRC and, with
 * fold, XORed into t->par. */
static int load_kept(struct scratch *t, const unsigned char *page, uint32_t want, int fold)
{
    if (mc_copy((char *)t->old, (const char *)page, PAGE))
        return FAULT;
    if (crc32c(t->old, PAGE) != want)
        return MISMATCH;
    if (fold)
        xor_into(t->par, t->old);
    return 0;
}

/* The update itself, on checked arguments; no Python object is touched (runs without the GIL).
 * The group's gk data pages start at gpos; src replaces its pages [first, first + k).  Parity
 * comes either from the old pages being replaced (read-modify-write: k pages and the parity page
 * read) or from the pages left as they are (reconstruct-write: gk - k pages read, none when the
 * whole group is new), whichever reads less, as md's raid5 chooses; every page read into parity
 * is checked against its CRC. */
static int update(struct scratch *t, unsigned char *w, Py_ssize_t gpos, Py_ssize_t gk, Py_ssize_t first,
                  Py_ssize_t ppos, Py_ssize_t cpos, Py_ssize_t slot, uint64_t word, const unsigned char *src,
                  Py_ssize_t k)
{
    int rmw = k < gk - k, rc;
    Py_ssize_t pos = gpos + first * PAGE, end = first + k;
    /* the CRC entries read: those of the pages read into parity, and those stored over */
    Py_ssize_t lo = rmw ? first : 0, hi = rmw ? end : gk;
    unsigned char probe[8];

    /* Loads: every page stored to below is read first (or probed), so none of them can fault
     * later (an emulated page with latent poison faults on stores as on loads). */
    if (mc_copy((char *)(t->want + lo), (const char *)w + cpos + 4 * lo, 4 * (size_t)(hi - lo))
        || mc_copy((char *)probe, (const char *)w + slot, 8))
        return FAULT;
    if (rmw) {
        if (mc_copy((char *)t->par, (const char *)w + ppos, PAGE))
            return FAULT;
        for (Py_ssize_t i = first; i < end; i++)
            if ((rc = load_kept(t, w + gpos + i * PAGE, t->want[i], k > 1)))
                return rc;
    } else {
        if (mc_copy((char *)probe, (const char *)w + ppos, 1))
            return FAULT;
        for (Py_ssize_t i = first; i < end; i++)
            if (mc_copy((char *)probe, (const char *)w + gpos + i * PAGE, 1))
                return FAULT;
        memset(t->par, 0, PAGE);
        for (Py_ssize_t i = 0; i < gk; i++) {
            if (i == first)
                i = end;
            if (i < gk && (rc = load_kept(t, w + gpos + i * PAGE, t->want[i], 1)))
                return rc;
        }
    }

    /* Stores, in the careful path's order: the in-flight word, the data (each page's CRC and
     * its share of parity taken in the same pass, while the source page is in cache), parity,
     * CRCs, the word cleared.  Pages not read above are cold: streamed, then fenced so that
     * they are ordered before the parity page. */
    uint64_t zero = 0;
    memcpy(w + slot, &word, 8);
    BARRIER();
    if (rmw && k == 1) {
        /* one page (the common small store): its old bytes are still in t->old, so parity is
         * stored straight from parity ^ old ^ new, one pass fewer */
        t->crcs[0] = crc32c(src, PAGE);
        memcpy(w + pos, src, PAGE);
        BARRIER();
        xor3(w + ppos, t->par, t->old, src);
    } else {
        for (Py_ssize_t i = 0; i < k; i++) {
            const unsigned char *p = src + i * PAGE;
            t->crcs[i] = crc32c(p, PAGE);
            put_page(w + pos + i * PAGE, p, t->par, !rmw);
        }
        if (!rmw)
            STORE_FENCE();
        BARRIER();
        memcpy(w + ppos, t->par, PAGE);
    }
    BARRIER();
    memcpy(w + cpos + 4 * first, t->crcs, 4 * (size_t)k);
    BARRIER();
    memcpy(w + slot, &zero, 8);
    return 0;
}

PyDoc_STRVAR(update_doc,
"update(view, gpos, gk, first, ppos, cpos, slot, word, src) -> int\n\n"
"Store src (k whole pages) over pages [first, first + k) of one parity group: its gk data pages\n"
"start at view[gpos:], its parity page is at view[ppos:], its CRC32C entries (little-endian u32,\n"
"gk of them) at view[cpos:]; the update-in-flight word `word` stands at view[slot:] meanwhile.\n"
"Returns 0, or -1 when a load from the view faulted, -2 when a page read into parity does not\n"
"match its CRC, -4 when src lies in the view: then nothing was stored.");

static int arg_ssize(PyObject *o, Py_ssize_t *out)
{
    *out = PyLong_AsSsize_t(o);
    return *out == -1 && PyErr_Occurred() ? -1 : 0;
}

/* Check every position against the view v, run update() on src s; -3 with an exception set
 * when the positions do not fit. */
static int run_update(Py_buffer *v, Py_buffer *s, Py_ssize_t gpos, Py_ssize_t gk, Py_ssize_t first, Py_ssize_t ppos,
                      Py_ssize_t cpos, Py_ssize_t slot, uint64_t word)
{
    Py_ssize_t k = s->len / PAGE;
    struct scratch *t;
    int rc;

    if (!(t = scratch()))
        return -3;
    if (s->len % PAGE || k < 1 || gk < 1 || gk > MAX_GROUP || first < 0 || first > gk - k
        || !in_view(gpos, gk * PAGE, v->len) || !in_view(ppos, PAGE, v->len) || !in_view(cpos, 4 * gk, v->len)
        || !in_view(slot, 8, v->len) || slot % 8 || cpos % 4) {
        PyErr_Format(PyExc_ValueError, "update: %zd bytes over pages %zd.. of a %zd-page group at %zd "
                     "(parity %zd, crcs %zd, slot %zd) do not fit a view of %zd bytes as whole pages",
                     s->len, first, gk, gpos, ppos, cpos, slot, v->len);
        return -3;
    }
    if ((const char *)s->buf < (const char *)v->buf + v->len && (const char *)v->buf < (const char *)s->buf + s->len)
        return DECLINED; /* src lies in the device itself: the careful path copies it as memmove does */
    if (s->len < GIL_THRESHOLD)
        return update(t, v->buf, gpos, gk, first, ppos, cpos, slot, word, s->buf, k);
    Py_BEGIN_ALLOW_THREADS
    rc = update(t, v->buf, gpos, gk, first, ppos, cpos, slot, word, s->buf, k);
    Py_END_ALLOW_THREADS
    return rc;
}

/* Borrow the buffers, run update(), release. */
static PyObject *call_update(PyObject *view, PyObject *src, Py_ssize_t gpos, Py_ssize_t gk, Py_ssize_t first,
                             Py_ssize_t ppos, Py_ssize_t cpos, Py_ssize_t slot, uint64_t word)
{
    Py_buffer v, s;
    int rc;

    if (PyObject_GetBuffer(view, &v, PyBUF_WRITABLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(src, &s, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&v);
        return NULL;
    }
    rc = run_update(&v, &s, gpos, gk, first, ppos, cpos, slot, word);
    PyBuffer_Release(&s);
    PyBuffer_Release(&v);
    if (rc == -3)
        return NULL;
    return PyLong_FromLong(rc);
}

static PyObject *py_update(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t gpos, gk, first, ppos, cpos, slot;
    unsigned long long word;

    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError, "update() takes exactly 9 arguments");
        return NULL;
    }
    if (arg_ssize(args[1], &gpos) || arg_ssize(args[2], &gk) || arg_ssize(args[3], &first)
        || arg_ssize(args[4], &ppos) || arg_ssize(args[5], &cpos) || arg_ssize(args[6], &slot))
        return NULL;
    word = PyLong_AsUnsignedLongLong(args[7]);
    if (word == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    return call_update(args[0], args[8], gpos, gk, first, ppos, cpos, slot, (uint64_t)word);
}

/* -- PageStore: the parity device's store of one page, from the caller to the medium in one call */

#define SKIPPED -5

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *acquire, *release, *refresh; /* the device lock's methods; Parity.window */
    PyObject *fallback;                    /* store()'s way out: fallback(src, off, rc or None) */
    Py_buffer view, state;                 /* while has_view: the lower device's view, its state word */
    int has_view;
    uint64_t gen;         /* the state generation the view was taken at */
    Py_ssize_t lay[7];    /* data_start, parity_start, csum_start, slot, group, ndata, map_start */
} PageStore;

static uint64_t state_now(PageStore *ps)
{
    uint64_t g;
    memcpy(&g, ps->state.buf, 8);
    return g;
}

static void drop_view(PageStore *ps)
{
    if (ps->has_view) {
        ps->has_view = 0;
        PyBuffer_Release(&ps->view);
        PyBuffer_Release(&ps->state);
    }
}

/* The store itself, lock held: a current view (taken by refresh when there is none), nothing in
 * flight and the group not under a mapping (the in-flight word and the group's dirty byte, read
 * from the medium), then update().  -3: an exception is set. */
static int pagestore_locked(PageStore *ps, Py_buffer *s, Py_ssize_t off)
{
    const Py_ssize_t *l = ps->lay;
    Py_ssize_t page = off / PAGE, g = page / l[4], a = g * l[4];
    Py_ssize_t gk = l[5] - a < l[4] ? l[5] - a : l[4];
    unsigned char probe[8] = {0};
    uint64_t busy = 0;

    if (!ps->has_view || state_now(ps) != ps->gen) {
        PyObject *r = PyObject_CallNoArgs(ps->refresh);
        if (!r)
            return -3;
        Py_DECREF(r);
        if (!ps->has_view || state_now(ps) != ps->gen)
            return SKIPPED; /* something is known bad on the lower device: the careful path */
    }
    if (!in_view(l[3], 8, ps->view.len) || !in_view(l[6] + g, 1, ps->view.len)
        || mc_copy((char *)probe, (const char *)ps->view.buf + l[3], 8))
        return SKIPPED;
    memcpy(&busy, probe, 8);
    if (busy || mc_copy((char *)probe, (const char *)ps->view.buf + l[6] + g, 1) || probe[0])
        return SKIPPED;
    uint64_t word = (((uint64_t)g << 26) | ((uint64_t)(page - a) << 13) | (uint64_t)(page + 1 - a)) + 1;
    return run_update(&ps->view, s, l[0] + a * PAGE, gk, page - a, l[1] + g * PAGE, l[2] + 4 * a, l[3], word);
}

/* Lock, store, unlock: update()'s code, SKIPPED when the lock is held elsewhere (never wait
 * here: the careful path waits), or -3 with an exception set. */
static int pagestore_try(PageStore *ps, Py_buffer *s, Py_ssize_t off)
{
    PyObject *r = PyObject_CallOneArg(ps->acquire, Py_False);
    int rc, got;

    if (!r)
        return -3;
    got = PyObject_IsTrue(r);
    Py_DECREF(r);
    if (got <= 0)
        return got < 0 ? -3 : SKIPPED;
    rc = pagestore_locked(ps, s, off);
    if (rc == -3) {
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        r = PyObject_CallNoArgs(ps->release);
        Py_XDECREF(r);
        PyErr_Restore(et, ev, tb); /* the first error wins */
        return -3;
    }
    if (!(r = PyObject_CallNoArgs(ps->release)))
        return -3;
    Py_DECREF(r);
    return rc;
}

static int page_shaped(PageStore *ps, Py_buffer *s, Py_ssize_t off)
{
    return s->len == PAGE && off >= 0 && off % PAGE == 0 && off / PAGE < ps->lay[5];
}

static PyObject *pagestore_call(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    PageStore *ps = (PageStore *)self;
    Py_ssize_t off;
    Py_buffer s;
    int rc;

    if (PyVectorcall_NARGS(nargsf) != 2 || kwnames) {
        PyErr_SetString(PyExc_TypeError, "PageStore(src, off) takes exactly 2 positional arguments");
        return NULL;
    }
    if (arg_ssize(args[1], &off) || PyObject_GetBuffer(args[0], &s, PyBUF_SIMPLE) < 0)
        return NULL;
    if (!page_shaped(ps, &s, off)) {
        PyErr_Format(PyExc_ValueError, "PageStore: %zd bytes at %zd are not one page of the data area", s.len, off);
        PyBuffer_Release(&s);
        return NULL;
    }
    rc = pagestore_try(ps, &s, off);
    PyBuffer_Release(&s);
    return rc == -3 ? NULL : PyLong_FromLong(rc);
}

/* The device's whole store(src, off) -> bytes stored: one page stored here, anything else (or a
 * page this declined) handed to fallback(src, off, rc or None) -- the store of a filesystem's
 * fast path without a Python frame in between (about 0.3 us of a 4 KiB store). */
static PyObject *pagestore_store(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PageStore *ps = (PageStore *)self;
    Py_ssize_t off;
    Py_buffer s;
    PyObject *code, *res;
    int rc;

    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "store(src, off) takes exactly 2 arguments");
        return NULL;
    }
    if (!ps->fallback) {
        PyErr_SetString(PyExc_RuntimeError, "store: no fallback set");
        return NULL;
    }
    if (!PyLong_CheckExact(args[1]) || arg_ssize(args[1], &off) || PyObject_GetBuffer(args[0], &s, PyBUF_SIMPLE) < 0) {
        PyErr_Clear(); /* not ours to judge: the careful path says what is wrong */
        return PyObject_CallFunctionObjArgs(ps->fallback, args[0], args[1], Py_None, NULL);
    }
    if (!page_shaped(ps, &s, off)) {
        PyBuffer_Release(&s);
        return PyObject_CallFunctionObjArgs(ps->fallback, args[0], args[1], Py_None, NULL);
    }
    rc = pagestore_try(ps, &s, off);
    PyBuffer_Release(&s);
    if (rc == 0)
        return PyLong_FromSsize_t(PAGE);
    if (rc == -3 || !(code = PyLong_FromLong(rc)))
        return NULL;
    res = PyObject_CallFunctionObjArgs(ps->fallback, args[0], args[1], code, NULL);
    Py_DECREF(code);
    return res;
}

static PyObject *pagestore_set_fallback(PyObject *self, PyObject *fn)
{
    PageStore *ps = (PageStore *)self;
    Py_XSETREF(ps->fallback, fn == Py_None ? NULL : Py_NewRef(fn));
    Py_RETURN_NONE;
}

static PyObject *pagestore_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *lock, *layout, *refresh;
    PageStore *ps;

    if (kwds && PyDict_GET_SIZE(kwds)) {
        PyErr_SetString(PyExc_TypeError, "PageStore takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "OO!O:PageStore", &lock, &PyTuple_Type, &layout, &refresh))
        return NULL;
    if (PyTuple_GET_SIZE(layout) != 7) {
        PyErr_SetString(PyExc_ValueError, "PageStore: layout is a 7-tuple");
        return NULL;
    }
    if (!(ps = (PageStore *)type->tp_alloc(type, 0)))
        return NULL;
    ps->vectorcall = pagestore_call;
    for (int i = 0; i < 7; i++) {
        if (arg_ssize(PyTuple_GET_ITEM(layout, i), &ps->lay[i]))
            goto fail;
    }
    if (ps->lay[4] < 1 || ps->lay[4] > MAX_GROUP || ps->lay[5] < 1 || ps->lay[3] % 8) {
        PyErr_SetString(PyExc_ValueError, "PageStore: layout out of range");
        goto fail;
    }
    if (!(ps->acquire = PyObject_GetAttrString(lock, "acquire")) || !(ps->release = PyObject_GetAttrString(lock, "release")))
        goto fail;
    ps->refresh = Py_NewRef(refresh);
    return (PyObject *)ps;
fail:
    Py_DECREF(ps);
    return NULL;
}

static PyObject *pagestore_set_view(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PageStore *ps = (PageStore *)self;
    unsigned long long gen;

    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "set_view(view, state, gen) takes exactly 3 arguments");
        return NULL;
    }
    drop_view(ps);
    if (args[0] == Py_None)
        Py_RETURN_NONE;
    gen = PyLong_AsUnsignedLongLong(args[2]);
    if (gen == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    if (PyObject_GetBuffer(args[0], &ps->view, PyBUF_WRITABLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[1], &ps->state, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&ps->view);
        return NULL;
    }
    if (ps->state.len < 8) {
        PyBuffer_Release(&ps->view);
        PyBuffer_Release(&ps->state);
        PyErr_SetString(PyExc_ValueError, "set_view: the state word is 8 bytes");
        return NULL;
    }
    ps->gen = (uint64_t)gen;
    ps->has_view = 1;
    Py_RETURN_NONE;
}

static int pagestore_traverse(PyObject *self, visitproc visit, void *arg)
{
    PageStore *ps = (PageStore *)self;
    Py_VISIT(ps->acquire);
    Py_VISIT(ps->release);
    Py_VISIT(ps->refresh);
    Py_VISIT(ps->fallback);
    return 0;
}

static int pagestore_clear(PyObject *self)
{
    PageStore *ps = (PageStore *)self;
    drop_view(ps);
    Py_CLEAR(ps->acquire);
    Py_CLEAR(ps->release);
    Py_CLEAR(ps->refresh);
    Py_CLEAR(ps->fallback);
    return 0;
}

static void pagestore_dealloc(PyObject *self)
{
    PyObject_GC_UnTrack(self);
    pagestore_clear(self);
    Py_TYPE(self)->tp_free(self);
}

static PyMethodDef pagestore_methods[] = {
    {"set_view", (PyCFunction)(void (*)(void))pagestore_set_view, METH_FASTCALL,
     "set_view(view, state, gen): the lower device's view and state word, taken at state generation\n"
     "gen, for the stores to come; set_view(None, None, 0) lets go of both."},
    {"store", (PyCFunction)(void (*)(void))pagestore_store, METH_FASTCALL,
     "store(src, off) -> int: the device's store: one page stored here, anything else, or a page\n"
     "this declined, by fallback(src, off, rc or None)."},
    {"set_fallback", (PyCFunction)pagestore_set_fallback, METH_O,
     "set_fallback(fn): what store() hands the rest to (None: nothing; store() then refuses)."},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(pagestore_doc,
"PageStore(lock, layout, refresh)(src, off) -> int\n\n"
"The parity device's store of one whole page src at logical byte off, in one call: take lock\n"
"(an RLock; never waiting), make sure of a current view (refresh() -- called with the lock\n"
"held -- takes one and gives it to set_view), check that no update is in flight and that the\n"
"page's group is not marked dirty (under an open mapping), run update(), let go of the lock.\n"
"layout = (data_start, parity_start, csum_start, slot, group, ndata, map_start), all bytes but\n"
"group and ndata (pages): the logical page L is at data_start + L * 4096, group g's parity page\n"
"at parity_start + g * 4096, page L's CRC at csum_start + 4 * L, g's dirty byte at map_start + g.  Returns update()'s codes, or -5 when it did not\n"
"try (the lock held elsewhere, no view while errors are known, an update in flight, a dirty\n"
"group): the careful path decides.");

static PyTypeObject PageStoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "daxkit._parity.PageStore",
    .tp_basicsize = sizeof(PageStore),
    .tp_dealloc = pagestore_dealloc,
    .tp_vectorcall_offset = offsetof(PageStore, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = pagestore_doc,
    .tp_traverse = pagestore_traverse,
    .tp_clear = pagestore_clear,
    .tp_methods = pagestore_methods,
    .tp_new = pagestore_new,
};

static PyMethodDef parity_methods[] = {
    {"update", (PyCFunction)(void (*)(void))py_update, METH_FASTCALL, update_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef parity_module = {
    PyModuleDef_HEAD_INIT, "daxkit._parity", "The parity layer's store path (ISA-L).", -1, parity_methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__parity(void)
{
#if defined(__x86_64__)
    __builtin_cpu_init();
    have_avx2 = __builtin_cpu_supports("avx2");
#endif
    mc_copy = (mc_copy_fn)PyCapsule_Import("daxkit._copymc._C_API", 0);
    if (!mc_copy)
        return NULL;
    if (PyType_Ready(&PageStoreType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&parity_module);
    if (m && PyModule_AddObjectRef(m, "PageStore", (PyObject *)&PageStoreType) < 0)
        Py_CLEAR(m);
    return m;
}
