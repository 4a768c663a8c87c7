/*
 * daxkit._copymc -- the machine-check-safe copy, daxkit's first piece of native code (the second,
 * _parity.c, borrows this copy through the _C_API capsule for its loads).
 *
 * Theory of operation
 *   A copy from a DAX mapping can fault on its source: SIGBUS for real hardware poison
 *   (BUS_MCEERR_AR) or a mapping past the end of a file, SIGSEGV for a PROT_NONE page (how the
 *   emulated device makes poison fault).  Like the kernel's copy_mc_to_kernel(), we want the copy
 *   to survive that and report how many bytes it could not deliver.
 *
 *   One process-wide handler for SIGBUS and SIGSEGV is installed once, at import.  Each thread has
 *   its own small context (initial-exec TLS, so the handler can read it without allocating): the
 *   source range being copied and a sigjmp_buf.  The handler recovers only when this thread is
 *   inside a copy and the fault address lies in that copy's source range; every other fault goes
 *   to the handler that was installed before ours (faulthandler, or the default action), untouched.
 *
 *   Python's faulthandler, when enabled after us, would sit on top and turn a recoverable fault
 *   into a fatal error; daxkit re-installs this handler after every faulthandler.enable() (see
 *   daxkit/__init__.py) and at every device open, and chains to faulthandler from here.
 *
 *   The fast path is one memcpy bracketed by sigsetjmp(env, 0) -- no signal-mask save, so no
 *   system call.  Because memcpy may touch the source out of order, a fault sends us to a careful
 *   forward copy (page-sized chunks, then bytes within the faulting chunk) that finds the exact
 *   first byte that cannot be read.
 *
 * Rules: nothing here knows about devices, badblocks or Python objects beyond buffers.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>

struct mc_ctx {
    volatile int active;
    const char *lo;
    const char *hi;
    volatile uintptr_t fault;
    sigjmp_buf env;
};

static __thread struct mc_ctx mc_ctx __attribute__((tls_model("initial-exec")));
static __thread uintptr_t mc_last_fault __attribute__((tls_model("initial-exec")));
static struct sigaction mc_old_bus, mc_old_segv;

#define MC_GIL_THRESHOLD (256 * 1024)

static volatile sig_atomic_t mc_chaining;
static volatile uintptr_t mc_chain_addr;

static void mc_default(int sig, siginfo_t *si)
{
    /* Restore the default action: a real fault re-executes and dies, a sent signal is re-raised. */
    signal(sig, SIG_DFL);
    if (si->si_code <= 0)
        raise(sig);
}

static void mc_chain(int sig, siginfo_t *si, void *uc)
{
    struct sigaction *old = sig == SIGBUS ? &mc_old_bus : &mc_old_segv;
    uintptr_t addr = si->si_code > 0 ? (uintptr_t)si->si_addr : 0;
    int has_action = (old->sa_flags & SA_SIGINFO) && old->sa_sigaction;
    int has_handler = !(old->sa_flags & SA_SIGINFO) && old->sa_handler != SIG_DFL && old->sa_handler != SIG_IGN;

    /*
     * Two loops to break.  faulthandler re-raises after restoring *its* predecessor, which may be
     * us (when it was enabled after us and we re-installed on top): re-entry goes to the default
     * action.  A predecessor that returns without curing the fault (a disabled faulthandler)
     * would see the same address forever: the second time, the default action.
     */
    if (mc_chaining || (addr && addr == mc_chain_addr) || !(has_action || has_handler)) {
        mc_default(sig, si);
        return;
    }
    mc_chaining = 1;
    mc_chain_addr = addr;
    if (has_action)
        old->sa_sigaction(sig, si, uc);
    else
        old->sa_handler(sig);
    mc_chaining = 0;
}

static void mc_handler(int sig, siginfo_t *si, void *uc)
{
    struct mc_ctx *c = &mc_ctx;

    if (c->active && si->si_code > 0) {
        const char *addr = (const char *)si->si_addr;
        int ours = sig == SIGBUS || si->si_code == SEGV_ACCERR;

        if (ours && addr >= c->lo && addr < c->hi) {
            c->fault = (uintptr_t)addr;
            c->active = 0;
            siglongjmp(c->env, 1);
        }
    }
    mc_chain(sig, si, uc);
}

static int mc_install(void)
{
    struct sigaction sa, cur;

    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = mc_handler;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);

    /* Re-installing must not make our own handler its own predecessor. */
    if (sigaction(SIGBUS, NULL, &cur) == 0 && !(cur.sa_sigaction == mc_handler && (cur.sa_flags & SA_SIGINFO))) {
        if (sigaction(SIGBUS, &sa, &mc_old_bus) != 0)
            return -1;
    }
    if (sigaction(SIGSEGV, NULL, &cur) == 0 && !(cur.sa_sigaction == mc_handler && (cur.sa_flags & SA_SIGINFO))) {
        if (sigaction(SIGSEGV, &sa, &mc_old_segv) != 0)
            return -1;
    }
    return 0;
}

/* Forward copy that stops at the first unreadable byte; returns bytes not copied. */
static size_t mc_copy_careful(char *dst, const char *src, size_t n)
{
    struct mc_ctx *c = &mc_ctx;
    volatile size_t done = 0;
    volatile int bytewise = 0;

    if (sigsetjmp(c->env, 0)) {
        if (bytewise) {
            mc_last_fault = c->fault;
            return n - done;
        }
        bytewise = 1;
    }
    c->active = 1;
    __asm__ __volatile__("" ::: "memory");
    if (!bytewise) {
        while (done < n) {
            size_t chunk = 4096 - ((uintptr_t)(src + done) & 4095);
            if (chunk > n - done)
                chunk = n - done;
            memcpy(dst + done, src + done, chunk);
            done += chunk;
        }
    } else {
        const volatile char *s = (const volatile char *)src;
        while (done < n) {
            dst[done] = s[done];
            done++;
        }
    }
    __asm__ __volatile__("" ::: "memory");
    c->active = 0;
    return 0;
}

static size_t mc_copy(char *dst, const char *src, size_t n)
{
    struct mc_ctx *c = &mc_ctx;

    c->lo = src;
    c->hi = src + n;
    if (sigsetjmp(c->env, 0) == 0) {
        c->active = 1;
        __asm__ __volatile__("" ::: "memory");
        memcpy(dst, src, n);
        __asm__ __volatile__("" ::: "memory");
        c->active = 0;
        return 0;
    }
    return mc_copy_careful(dst, src, n);
}

static size_t mc_copy_maybe_nogil(char *dst, const char *src, size_t n)
{
    size_t left;

    if (n < MC_GIL_THRESHOLD)
        return mc_copy(dst, src, n);
    Py_BEGIN_ALLOW_THREADS
    left = mc_copy(dst, src, n);
    Py_END_ALLOW_THREADS
    return left;
}

/* Borrow dst (writable) and src (readable, contiguous); on failure nothing is held. */
static int mc_get_buffers(PyObject *dst, PyObject *src, Py_buffer *d, Py_buffer *s)
{
    if (PyObject_GetBuffer(dst, d, PyBUF_WRITABLE) < 0)
        return -1;
    if (PyObject_GetBuffer(src, s, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(d);
        return -1;
    }
    return 0;
}

static PyObject *mc_result(Py_buffer *d, Py_buffer *s, size_t left)
{
    PyBuffer_Release(s);
    PyBuffer_Release(d);
    if (left == (size_t)-1)
        return NULL;
    return PyLong_FromSize_t(left);
}

PyDoc_STRVAR(copy_mc_doc,
"copy_mc(dst, src) -> int\n\n"
"Copy len(src) bytes from src into the writable buffer dst, surviving a fault on src.\n"
"Returns the number of bytes NOT copied (0 on success); bytes before the fault are in dst.");

static PyObject *py_copy_mc(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer d, s;
    size_t left = (size_t)-1;

    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "copy_mc(dst, src) takes exactly 2 arguments");
        return NULL;
    }
    if (mc_get_buffers(args[0], args[1], &d, &s) < 0)
        return NULL;
    if (d.len < s.len)
        PyErr_Format(PyExc_ValueError, "copy_mc: dst holds %zd bytes, src has %zd", d.len, s.len);
    else
        left = mc_copy_maybe_nogil(d.buf, s.buf, (size_t)s.len);
    return mc_result(&d, &s, left);
}

PyDoc_STRVAR(copy_mc_from_doc,
"copy_mc_from(dst, src, offset) -> int\n\n"
"Copy len(dst) bytes from src[offset:] into dst, surviving a fault on src (no slice object).\n"
"Returns the number of bytes NOT copied.");

static PyObject *py_copy_mc_from(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer d, s;
    Py_ssize_t off;
    size_t left = (size_t)-1;

    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "copy_mc_from(dst, src, offset) takes exactly 3 arguments");
        return NULL;
    }
    off = PyLong_AsSsize_t(args[2]);
    if (off == -1 && PyErr_Occurred())
        return NULL;
    if (mc_get_buffers(args[0], args[1], &d, &s) < 0)
        return NULL;
    if (off < 0 || d.len > s.len - off)
        PyErr_Format(PyExc_ValueError, "copy_mc_from: %zd bytes at offset %zd do not fit a source of %zd",
                     d.len, off, s.len);
    else
        left = mc_copy_maybe_nogil(d.buf, (const char *)s.buf + off, (size_t)d.len);
    return mc_result(&d, &s, left);
}

PyDoc_STRVAR(copy_mc_bytes_doc,
"copy_mc_bytes(src, offset, n) -> bytes | None\n\n"
"A new bytes object holding src[offset:offset+n], copied machine-check-safely; None when the\n"
"copy faulted (the caller's slow path then finds out where).  One copy, no zero-fill.");

static PyObject *py_copy_mc_bytes(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer s;
    Py_ssize_t off, n;
    PyObject *out = NULL;

    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "copy_mc_bytes(src, offset, n) takes exactly 3 arguments");
        return NULL;
    }
    off = PyLong_AsSsize_t(args[1]);
    if (off == -1 && PyErr_Occurred())
        return NULL;
    n = PyLong_AsSsize_t(args[2]);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (PyObject_GetBuffer(args[0], &s, PyBUF_SIMPLE) < 0)
        return NULL;
    if (off < 0 || n < 0 || n > s.len - off) {
        PyErr_Format(PyExc_ValueError, "copy_mc_bytes: %zd bytes at offset %zd do not fit a source of %zd",
                     n, off, s.len);
    } else if ((out = PyBytes_FromStringAndSize(NULL, n)) != NULL) {
        if (mc_copy_maybe_nogil(PyBytes_AS_STRING(out), (const char *)s.buf + off, (size_t)n)) {
            Py_DECREF(out);
            out = Py_NewRef(Py_None);
        }
    }
    PyBuffer_Release(&s);
    return out;
}

static PyObject *py_last_fault(PyObject *self, PyObject *unused)
{
    return PyLong_FromSize_t((size_t)mc_last_fault);
}

static PyObject *py_install(PyObject *self, PyObject *unused)
{
    if (mc_install() != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static PyMethodDef mc_methods[] = {
    {"copy_mc", (PyCFunction)(void (*)(void))py_copy_mc, METH_FASTCALL, copy_mc_doc},
    {"copy_mc_from", (PyCFunction)(void (*)(void))py_copy_mc_from, METH_FASTCALL, copy_mc_from_doc},
    {"copy_mc_bytes", (PyCFunction)(void (*)(void))py_copy_mc_bytes, METH_FASTCALL, copy_mc_bytes_doc},
    {"last_fault", py_last_fault, METH_NOARGS,
     "Address of this thread's last fault survived by a copy (0 if none)."},
    {"install", py_install, METH_NOARGS,
     "(Re)install the fault handler on top of whatever is installed now; idempotent."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef mc_module = {
    PyModuleDef_HEAD_INIT, "daxkit._copymc", "Machine-check-safe copy.", -1, mc_methods,
};

PyMODINIT_FUNC PyInit__copymc(void)
{
    PyObject *m, *api;

    if (mc_install() != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    if (!(m = PyModule_Create(&mc_module)))
        return NULL;
    /* The copy itself, for native code that loads from a DAX view (daxkit._parity). */
    api = PyCapsule_New((void *)mc_copy, "daxkit._copymc._C_API", NULL);
    if (!api || PyModule_AddObject(m, "_C_API", api) < 0) {
        Py_XDECREF(api);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
