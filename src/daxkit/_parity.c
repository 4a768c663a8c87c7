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
 *
 * Rules: pure mechanism; every argument is checked against the view before anything is touched.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <isa-l/crc.h>
#include <stdint.h>
#include <string.h>

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
static void xor_into(unsigned char *restrict dst, const unsigned char *restrict src)
{
    for (size_t i = 0; i < PAGE; i += 8) {
        uint64_t a, b;
        memcpy(&a, dst + i, 8);
        memcpy(&b, src + i, 8);
        a ^= b;
        memcpy(dst + i, &a, 8);
    }
}

static int in_view(Py_ssize_t off, Py_ssize_t n, Py_ssize_t len)
{
    return off >= 0 && n >= 0 && off <= len - n;
}

/* The update itself, on checked arguments; no Python object is touched (runs without the GIL).
 * The group's gk data pages start at gpos; src replaces its pages [first, first + k).  Parity
 * comes either from the old pages being replaced (read-modify-write: k pages and the parity page
 * read) or from the pages left as they are (reconstruct-write: gk - k pages read), whichever
 * reads less, as md's raid5 chooses; every page read into parity is checked against its CRC. */
static int update(struct scratch *t, unsigned char *w, Py_ssize_t gpos, Py_ssize_t gk, Py_ssize_t first,
                  Py_ssize_t ppos, Py_ssize_t cpos, Py_ssize_t slot, uint64_t word, const unsigned char *src,
                  Py_ssize_t k)
{
    int rmw = k < gk - k;
    Py_ssize_t pos = gpos + first * PAGE;

    /* Loads: every page stored to below is read first (or probed), so none of them can fault
     * later (an emulated page with latent poison faults on stores as on loads). */
    if (mc_copy((char *)t->want, (const char *)w + cpos, 4 * gk) || mc_copy((char *)t->old, (const char *)w + slot, 8))
        return FAULT;
    if (rmw) {
        if (mc_copy((char *)t->par, (const char *)w + ppos, PAGE))
            return FAULT;
        for (Py_ssize_t i = first; i < first + k; i++) {
            if (mc_copy((char *)t->old, (const char *)w + gpos + i * PAGE, PAGE))
                return FAULT;
            if (crc32c(t->old, PAGE) != t->want[i])
                return MISMATCH;
            xor_into(t->par, t->old);
        }
    } else {
        if (mc_copy((char *)t->old, (const char *)w + ppos, 1))
            return FAULT;
        memset(t->par, 0, PAGE);
        for (Py_ssize_t i = 0; i < gk; i++) {
            if (i >= first && i < first + k) {
                if (mc_copy((char *)t->old, (const char *)w + gpos + i * PAGE, 1))
                    return FAULT;
                continue;
            }
            if (mc_copy((char *)t->old, (const char *)w + gpos + i * PAGE, PAGE))
                return FAULT;
            if (crc32c(t->old, PAGE) != t->want[i])
                return MISMATCH;
            xor_into(t->par, t->old);
        }
    }

    /* Stores, in the careful path's order: the in-flight word, the data (each page's CRC and
     * its share of parity taken on the way, while the page is in cache), parity, CRCs, the
     * word cleared. */
    uint64_t zero = 0;
    memcpy(w + slot, &word, 8);
    BARRIER();
    for (Py_ssize_t i = 0; i < k; i++) {
        const unsigned char *p = src + i * PAGE;
        t->crcs[i] = crc32c(p, PAGE);
        xor_into(t->par, p);
        memcpy(w + pos + i * PAGE, p, PAGE);
    }
    BARRIER();
    memcpy(w + ppos, t->par, PAGE);
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

static PyObject *py_update(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer v, s;
    Py_ssize_t gpos, gk, first, ppos, cpos, slot, k;
    unsigned long long word;
    int rc = 0;
    struct scratch *t;

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
    if (!(t = scratch()))
        return NULL;
    if (PyObject_GetBuffer(args[0], &v, PyBUF_WRITABLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[8], &s, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&v);
        return NULL;
    }
    k = s.len / PAGE;
    if (s.len % PAGE || k < 1 || gk < 1 || gk > MAX_GROUP || first < 0 || first > gk - k
        || !in_view(gpos, gk * PAGE, v.len) || !in_view(ppos, PAGE, v.len) || !in_view(cpos, 4 * gk, v.len)
        || !in_view(slot, 8, v.len) || slot % 8 || cpos % 4) {
        PyErr_Format(PyExc_ValueError, "update: %zd bytes over pages %zd.. of a %zd-page group at %zd "
                     "(parity %zd, crcs %zd, slot %zd) do not fit a view of %zd bytes as whole pages",
                     s.len, first, gk, gpos, ppos, cpos, slot, v.len);
        rc = -3;
        goto out;
    }
    if ((const char *)s.buf < (const char *)v.buf + v.len && (const char *)v.buf < (const char *)s.buf + s.len) {
        rc = DECLINED; /* src lies in the device itself: the careful path copies it as memmove does */
        goto out;
    }
    if (s.len < GIL_THRESHOLD) {
        rc = update(t, v.buf, gpos, gk, first, ppos, cpos, slot, (uint64_t)word, s.buf, k);
    } else {
        Py_BEGIN_ALLOW_THREADS
        rc = update(t, v.buf, gpos, gk, first, ppos, cpos, slot, (uint64_t)word, s.buf, k);
        Py_END_ALLOW_THREADS
    }
out:
    PyBuffer_Release(&s);
    PyBuffer_Release(&v);
    if (rc == -3)
        return NULL;
    return PyLong_FromLong(rc);
}

static PyMethodDef parity_methods[] = {
    {"update", (PyCFunction)(void (*)(void))py_update, METH_FASTCALL, update_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef parity_module = {
    PyModuleDef_HEAD_INIT, "daxkit._parity", "The parity layer's store path (ISA-L).", -1, parity_methods,
};

PyMODINIT_FUNC PyInit__parity(void)
{
    mc_copy = (mc_copy_fn)PyCapsule_Import("daxkit._copymc._C_API", 0);
    if (!mc_copy)
        return NULL;
    return PyModule_Create(&parity_module);
}
