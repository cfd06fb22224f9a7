/* The native select part: select()'s first step, the poll, in C (see select.py).
 *
 * select(*ops, timeout=None) polls the operations once, from a random start, when
 * every one is on an exact NativeChannel (no subclass overrides its
 * operations). The first that
 * succeeds is the result, each attempt one step of the channel. Nothing ready:
 * timeout <= 0 raises TimeoutError at once; otherwise, or when some operation
 * is not native (a Port, a subclass's send, something invalid), select.py's
 * select runs as it always does (it polls again, registers, parks), so every
 * behaviour but the cost of the ready case is the Python one's.
 */
#include "native.h"

#include <time.h>
#include <unistd.h>

static PyObject *SlowSelect;     /* owned: select.py's select */
static PyObject *ClosedExc;      /* owned: ChannelClosed */
static uint64_t rng_state;       /* xorshift64*, touched only under the GIL */

static Py_ssize_t
random_below(Py_ssize_t n)
{
    uint64_t x = rng_state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng_state = x;
    return (Py_ssize_t)((x * 0x2545F4914F6CDD1DULL) >> 33) % n;
}

static PyObject *
slow(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    return PyObject_Vectorcall(SlowSelect, args, nargs, kwnames);
}

static PyObject *
native_select(PyObject *module, PyObject *const *args, Py_ssize_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *timeout = Py_None;
    if (SlowSelect == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "ioserver._native: _setup_select() was not called");
        return NULL;
    }
    if (kwnames != NULL) {
        if (PyTuple_GET_SIZE(kwnames) != 1
            || PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "timeout") != 0) {
            return slow(args, nargs, kwnames);  /* it raises the TypeError */
        }
        timeout = args[nargs];
    }
    if (nargs == 0) {
        return slow(args, nargs, kwnames);
    }
    /* Every operation native? Else the Python select does it all. */
    for (Py_ssize_t i = 0; i < nargs; i++) {
        PyObject *op = args[i];
        if (PyTuple_CheckExact(op)) {
            if (PyTuple_GET_SIZE(op) != 2 || ioserver_channel_kind(PyTuple_GET_ITEM(op, 0)) != 2) {
                return slow(args, nargs, kwnames);
            }
        }
        else if (ioserver_channel_kind(op) != 2) {
            return slow(args, nargs, kwnames);
        }
    }
    Py_ssize_t start = nargs == 1 ? 0 : random_below(nargs);
    for (Py_ssize_t k = 0; k < nargs; k++) {
        Py_ssize_t i = start + k;
        if (i >= nargs) {
            i -= nargs;
        }
        PyObject *op = args[i], *src, *value = NULL, *out = NULL;
        if (PyTuple_CheckExact(op)) {
            src = PyTuple_GET_ITEM(op, 0);
            value = PyTuple_GET_ITEM(op, 1);
        }
        else {
            src = op;
        }
        /* src and value are borrowed from args, which the caller keeps alive. */
        int r = ioserver_channel_poll(src, value, &out);
        if (r == 1) {
            PyObject *result = PyTuple_New(2);
            if (result == NULL) {
                if (value == NULL) {
                    Py_DECREF(out);  /* lost to a memory error: say so */
                }
                return NULL;
            }
            PyTuple_SET_ITEM(result, 0, Py_NewRef(src));
            PyTuple_SET_ITEM(result, 1, value == NULL ? out : Py_NewRef(Py_None));
            return result;
        }
        if (r == -1) {
            PyObject *exc = PyObject_CallFunctionObjArgs(ClosedExc, src, value ? value : Py_None,
                                                         NULL);
            if (exc != NULL) {
                PyErr_SetObject(ClosedExc, exc);
                Py_DECREF(exc);
            }
            return NULL;
        }
        if (r == -2) {
            return NULL;
        }
    }
    if (timeout != Py_None) {
        double t = PyFloat_AsDouble(timeout);
        if (t == -1.0 && PyErr_Occurred()) {
            return NULL;
        }
        if (t <= 0) {
            PyErr_SetString(PyExc_TimeoutError, "select timed out");
            return NULL;
        }
    }
    return slow(args, nargs, kwnames);
}

static PyObject *
setup_select(PyObject *module, PyObject *args)
{
    PyObject *fn, *closed;
    if (!PyArg_UnpackTuple(args, "_setup_select", 2, 2, &fn, &closed)) {
        return NULL;
    }
    Py_XSETREF(SlowSelect, Py_NewRef(fn));  /* owned for the process's life */
    Py_XSETREF(ClosedExc, Py_NewRef(closed));
    Py_RETURN_NONE;
}

static PyMethodDef select_functions[] = {
    {"select", (PyCFunction)(void (*)(void))native_select, METH_FASTCALL | METH_KEYWORDS,
     "select(*ops, timeout=None): select.select with the poll of native channels in C."},
    {"_setup_select", setup_select, METH_VARARGS,
     "Give the native select the Python select (the slow path) and ChannelClosed."},
    {NULL},
};

int
ioserver_init_select(PyObject *module)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    rng_state = ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)ts.tv_sec ^ ((uint64_t)getpid() << 40);
    if (rng_state == 0) {
        rng_state = 0x9E3779B97F4A7C15ULL;
    }
    return PyModule_AddFunctions(module, select_functions);
}
