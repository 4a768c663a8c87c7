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
 *   known there, and byte offsets into it; this module knows nothing of layouts.  Every load
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

/* The update itself, on checked arguments; no Python object is touched (runs without the GIL). */
static int update(struct scratch *t, unsigned char *w, Py_ssize_t pos, Py_ssize_t ppos, Py_ssize_t cpos,
                  Py_ssize_t slot, uint64_t word, const unsigned char *src, Py_ssize_t k, int full)
{
    /* Loads: every page stored to below is read first, so none of them can fault later. */
    if (mc_copy((char *)t->want, (const char *)w + cpos, 4 * k) || mc_copy((char *)t->par, (const char *)w + ppos, PAGE)
        || mc_copy((char *)t->old, (const char *)w + slot, 8)) {
        return FAULT;
    }
    if (full) {
        /* the data pages are not loaded, yet stored to: probe one byte of each (an emulated
         * page with latent poison faults on stores as on loads); parity comes from src alone */
        for (Py_ssize_t i = 0; i < k; i++) {
            if (mc_copy((char *)t->old, (const char *)w + pos + i * PAGE, 1))
                return FAULT;
        }
        memset(t->par, 0, PAGE);
    } else {
        for (Py_ssize_t i = 0; i < k; i++) {
            if (mc_copy((char *)t->old, (const char *)w + pos + i * PAGE, PAGE))
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
    memcpy(w + cpos, t->crcs, 4 * (size_t)k);
    BARRIER();
    memcpy(w + slot, &zero, 8);
    return 0;
}

PyDoc_STRVAR(update_doc,
"update(view, pos, ppos, cpos, slot, word, src, full) -> int\n\n"
"Store src (k whole pages, k >= 1) at view[pos:], the pages of one parity group whose parity page\n"
"is at view[ppos:] and whose CRC32C entries (little-endian u32, k of them) are at view[cpos:],\n"
"with the update-in-flight word `word` at view[slot:] for its duration.  `full`: src is the whole\n"
"group (parity comes from src alone, no old page is read).  Returns 0, or -1 when a load from\n"
"the view faulted, -2 when an old page does not match its CRC, -4 when src lies in the view:\n"
"then nothing was stored.");

static PyObject *py_update(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer v, s;
    Py_ssize_t pos, ppos, cpos, slot, k;
    unsigned long long word;
    int full, rc = 0;
    struct scratch *t;

    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "update() takes exactly 8 arguments");
        return NULL;
    }
    if ((pos = PyLong_AsSsize_t(args[1])) == -1 && PyErr_Occurred())
        return NULL;
    if ((ppos = PyLong_AsSsize_t(args[2])) == -1 && PyErr_Occurred())
        return NULL;
    if ((cpos = PyLong_AsSsize_t(args[3])) == -1 && PyErr_Occurred())
        return NULL;
    if ((slot = PyLong_AsSsize_t(args[4])) == -1 && PyErr_Occurred())
        return NULL;
    word = PyLong_AsUnsignedLongLong(args[5]);
    if (word == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    if ((full = PyObject_IsTrue(args[7])) < 0)
        return NULL;
    if (!(t = scratch()))
        return NULL;
    if (PyObject_GetBuffer(args[0], &v, PyBUF_WRITABLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[6], &s, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&v);
        return NULL;
    }
    k = s.len / PAGE;
    if (s.len % PAGE || k < 1 || k > MAX_GROUP || !in_view(pos, s.len, v.len) || !in_view(ppos, PAGE, v.len)
        || !in_view(cpos, 4 * k, v.len) || !in_view(slot, 8, v.len) || slot % 8 || cpos % 4) {
        PyErr_Format(PyExc_ValueError, "update: %zd bytes at %zd (parity %zd, crcs %zd, slot %zd) do not fit "
                     "a view of %zd bytes as whole pages", s.len, pos, ppos, cpos, slot, v.len);
        rc = -3;
        goto out;
    }
    if ((const char *)s.buf < (const char *)v.buf + v.len && (const char *)v.buf < (const char *)s.buf + s.len) {
        rc = DECLINED; /* src lies in the device itself: the careful path copies it as memmove does */
        goto out;
    }
    if (s.len < GIL_THRESHOLD) {
        rc = update(t, v.buf, pos, ppos, cpos, slot, (uint64_t)word, s.buf, k, full);
    } else {
        Py_BEGIN_ALLOW_THREADS
        rc = update(t, v.buf, pos, ppos, cpos, slot, (uint64_t)word, s.buf, k, full);
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
