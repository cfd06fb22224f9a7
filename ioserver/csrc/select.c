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

static long long
now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Operation i of args: its channel and, for a send, its value (both borrowed:
 * the caller keeps args alive). */
static inline PyObject *
op_source(PyObject *const *args, Py_ssize_t i, PyObject **value)
{
    PyObject *op = args[i];
    if (PyTuple_CheckExact(op)) {
        *value = PyTuple_GET_ITEM(op, 1);
        return PyTuple_GET_ITEM(op, 0);
    }
    *value = NULL;
    return op;
}

static PyObject *
pair(PyObject *src, PyObject *second)  /* steals second */
{
    PyObject *result = PyTuple_New(2);
    if (result == NULL) {
        Py_DECREF(second);
        return NULL;
    }
    PyTuple_SET_ITEM(result, 0, Py_NewRef(src));
    PyTuple_SET_ITEM(result, 1, second);
    return result;
}

/* (src, msg) for a message just received from src (steals msg). Out of memory,
 * the message goes back to the head of src, so nothing is lost, and NULL. */
static PyObject *
received(PyObject *src, PyObject *msg)
{
    PyObject *result = PyTuple_New(2);
    if (result == NULL) {
        ioserver_SavedError saved;
        ioserver_err_save(&saved);
        if (ioserver_channel_unrecv(src, msg) < 0) {
            PyErr_WriteUnraisable(src);  /* no memory even for that: say so */
        }
        ioserver_err_restore(&saved);
        Py_DECREF(msg);
        return NULL;
    }
    PyTuple_SET_ITEM(result, 0, Py_NewRef(src));
    PyTuple_SET_ITEM(result, 1, msg);
    return result;
}

static void
raise_closed(PyObject *src, PyObject *value)
{
    PyObject *exc = PyObject_CallFunctionObjArgs(ClosedExc, src, value ? value : Py_None, NULL);
    if (exc != NULL) {
        PyErr_SetObject(ClosedExc, exc);
        Py_DECREF(exc);
    }
}

static void
unregister_all(PyObject *const *args, Py_ssize_t nargs, PyObject *h)
{
    PyObject *value;
    for (Py_ssize_t i = 0; i < nargs; i++) {
        ioserver_channel_unregister(op_source(args, i, &value), h);
    }
}

/* Step 1: poll every operation once from start. A new (source, result) pair,
 * NULL with an exception, or NULL without one when nothing is ready. */
static PyObject *
poll_once(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t start)
{
    for (Py_ssize_t k = 0; k < nargs; k++) {
        Py_ssize_t i = start + k < nargs ? start + k : start + k - nargs;
        PyObject *value, *out = NULL;
        PyObject *src = op_source(args, i, &value);
        int r = ioserver_channel_poll(src, value, &out);
        if (r == 1) {
            return value == NULL ? received(src, out) : pair(src, Py_NewRef(Py_None));
        }
        if (r == -1) {
            raise_closed(src, value);
            return NULL;
        }
        if (r == -2) {
            return NULL;
        }
    }
    return NULL;
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
    long long deadline = -1;
    if (timeout != Py_None) {
        double t = PyFloat_AsDouble(timeout);
        if (t == -1.0 && PyErr_Occurred()) {
            return NULL;
        }
        deadline = t > 0 ? now_us() + (long long)(t * 1e6) + 1 : 0;
    }
    PyObject *const RETRY = ioserver_mark(IOSERVER_RETRY);
    PyObject *const SENT = ioserver_mark(IOSERVER_SENT);
    PyObject *const CLOSED = ioserver_mark(IOSERVER_CLOSED);
    int is_main = -1;
    for (;;) {
        Py_ssize_t start = nargs == 1 ? 0 : random_below(nargs);
        PyObject *result = poll_once(args, nargs, start);
        if (result != NULL || PyErr_Occurred()) {
            return result;
        }
        long long us = -1;
        if (deadline >= 0) {
            us = deadline == 0 ? 0 : deadline - now_us();
            if (us <= 0) {
                PyErr_SetString(PyExc_TimeoutError, "select timed out");
                return NULL;
            }
        }
        /* Step 2: register one handle on every operation, in the same order.
         * A main-thread select is never stored for (its sends are handed a
         * slot or asked to come), so an interrupted one sent nothing. */
        if (is_main < 0) {
            if (ioserver_green_possible()) {
                return slow(args, nargs, kwnames);  /* a greenlet's? select.py decides */
            }
            is_main = ioserver_is_main_thread();
        }
        PyObject *h = ioserver_tw_get(is_main);  /* owned */
        if (h == NULL) {
            return NULL;
        }
        if (!ioserver_native_unpark_ok(h)) {
            ioserver_tw_put(h);  /* park/unpark replaced (a test's hooks): go through them */
            return slow(args, nargs, kwnames);
        }
        int park_now = 1;
        for (Py_ssize_t k = 0; k < nargs; k++) {
            Py_ssize_t i = start + k < nargs ? start + k : start + k - nargs;
            PyObject *value;
            PyObject *src = op_source(args, i, &value);
            int r = ioserver_channel_register(src, h, i, value);
            if (r < 0) {
                unregister_all(args, nargs, h);
                ioserver_tw_put(h);
                return NULL;
            }
            if (r == 0) {
                /* Ready now: take our own claim so no waker acts on the
                 * entries made; if a waker got there first, its handoff stands. */
                park_now = !ioserver_claim(h);
                break;
            }
        }
        if (!park_now) {
            unregister_all(args, nargs, h);
            ioserver_tw_put(h);
            continue;  /* poll again */
        }
        /* Step 3: park. */
        int w = ioserver_tw_wait(h, us);
        if (w == IOSERVER_PARK_INTR) {
            if (ioserver_claim(h)) {
                unregister_all(args, nargs, h);
                ioserver_tw_put(h);
                if (PyErr_CheckSignals() < 0) {
                    return NULL;  /* nothing happened */
                }
                continue;
            }
            ioserver_tw_consume(h);  /* a waker won: its handoff stands */
            w = IOSERVER_PARK_WOKEN;
        }
        /* Step 4: unregister, then finish. */
        unregister_all(args, nargs, h);
        if (w == IOSERVER_PARK_TIMEOUT) {
            ioserver_tw_put(h);
            PyErr_SetString(PyExc_TimeoutError, "select timed out");
            return NULL;
        }
        ioserver_Handle *hd = (ioserver_Handle *)h;
        Py_ssize_t index = hd->index;
        PyObject *mark = Py_NewRef(hd->value);  /* a mark, or the message */
        ioserver_tw_put(h);
        if (mark == RETRY) {
            Py_DECREF(mark);
            continue;
        }
        PyObject *value;
        PyObject *src = op_source(args, index, &value);
        if (PyErr_CheckSignals() < 0) {
            /* Interrupted after the wakeup: give back what was handed over. */
            if (value != NULL) {
                ioserver_channel_abandon(src, mark);
            }
            else if (ioserver_channel_unrecv(src, mark) < 0) {
                PyErr_Clear();  /* out of memory: the message is lost */
            }
            Py_DECREF(mark);
            return NULL;
        }
        if (value == NULL) {
            ioserver_channel_release_slot(src);
            return received(src, mark);
        }
        if (mark == SENT) {
            Py_DECREF(mark);
            return pair(src, Py_NewRef(Py_None));
        }
        if (mark == CLOSED) {
            Py_DECREF(mark);
            raise_closed(src, value);
            return NULL;
        }
        int r = ioserver_channel_claimed_send(src, value, mark);
        Py_DECREF(mark);
        if (r == 1) {
            return pair(src, Py_NewRef(Py_None));
        }
        if (r == -1) {
            raise_closed(src, value);
            return NULL;
        }
        if (r == -2) {
            return NULL;
        }
    }
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
