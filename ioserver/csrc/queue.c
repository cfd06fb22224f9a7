/* The request queue and its coalescing self-pipe: the compiled twin of
 * ioserver/requests.py (whose module docstring is the theory; read it first).
 *
 * _native.RequestQueue is the core of requests.NativeRequestQueue: it keeps the
 * queue, the drain-pending token, the pipe and the counters, and runs the hot and
 * racy paths (submit, the pipe callback, wake_at, the drain, taking the queue
 * at close, closing the pipe). The Python subclass adds what is neither hot nor
 * racy: attach, close's rejections, the fork handling and the log messages.
 *
 * The GIL is the only mutex
 * -------------------------
 * Every "step" below is a stretch of C that runs with the GIL held and calls
 * no Python code and releases no reference (a Py_DECREF may run a __del__,
 * which may release the GIL): no other thread can see it half done. So:
 *   - submit: "the done check, the append, and taking the token if it is
 *     free" is one step; the pure-Python [1]-[3] argument collapses to it;
 *   - the drain's "release the token, then look once more" is one step: the
 *     token is released only if the queue is empty;
 *   - close: "mark done and take every queued request" is one step, so each
 *     submit falls completely before it (its request is taken, and run or
 *     rejected) or completely after it (it raises ServerStopped): there is no
 *     late producer to withdraw.
 * Python calls (the requests, call_soon, the log callbacks) and decrefs happen
 * only between steps, where the state is consistent.
 *
 * The pipe byte is written with the GIL released: a loop thread woken by the
 * byte then finds the GIL free. (Held, the loop thread woke, found the GIL
 * taken by the producer on its way to park, and slept again on the GIL: one
 * more wakeup, 12.4 -> 16.9 us for an io.call round trip here; released, 10.9.)
 * One exception: a producer that says more is coming (a port's send from the
 * thread draining that port's inbox, with messages still in it: csrc/port.c)
 * keeps the GIL for its byte, so the loop thread wakes, waits for the GIL
 * while the producer goes through its batch, and drains the batch in one go
 * (100-port echo: a quarter of the drains and pipe writes, +8% round trips).
 * So that close can't free an fd number (for the kernel to reuse) under a
 * write made without the GIL, each such write is counted (`writers`, under
 * the GIL) and close_fds hands the fds to the last writer out instead of
 * closing them itself.
 *
 * References: the ring owns one reference to each queued fn, args tuple and
 * reject (NULL for None). A pop moves the three to the popper, which drops
 * them after the call (or hands them to Python in a list at close).
 */
#include "native.h"

#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>

#include "structmember.h"

/* Wakeups in a row that find nothing before the loop is said to spin
 * (wakeup.SPIN_THRESHOLD; the Python subclass logs it). */
#define SPIN_THRESHOLD 512
/* The ring starts this big; one bigger than SHRINK_ABOVE slots may shrink when
 * a drain empties it (see ring_maybe_shrink: a burst's memory is returned). */
#define RING_INITIAL 64
#define SHRINK_ABOVE 8192

typedef struct {
    PyObject *fn;     /* owned */
    PyObject *args;   /* owned, a tuple */
    PyObject *reject; /* owned, or NULL for None */
} Request;

typedef struct {
    PyObject_HEAD
    /* The ring: `count` requests from `ring[head]`, wrapping at `mask`. */
    Request *ring;
    Py_ssize_t mask; /* capacity - 1 (capacity is a power of two) */
    Py_ssize_t head;
    Py_ssize_t count;
    Py_ssize_t peak; /* the most queued since the ring was last empty */
    /* The drain-pending token: 1 while a pipe byte is in flight or a drain is
     * scheduled with call_soon. Taken and released only inside steps. */
    int token;
    int done;
    int rfd, wfd;
    /* Producers inside write(2) with the GIL released, and the fds close_fds
     * left for the last of them to close (-1: none). */
    int writers;
    int deferred_rfd, deferred_wfd;
    int attached;
    unsigned long thread; /* the loop thread's ident, once attached */
    PyObject *loop;       /* owned, or NULL before attach */
    PyObject *call_soon;  /* owned: loop.call_soon */
    PyObject *drain;      /* owned: self._drain (a cycle, broken by tp_clear) */
    PyObject *why;        /* owned str: what a refused submit raises with */
    PyObject *weakrefs;
    Py_ssize_t max_batch;
    double quantum;
    double next_wakeup;
    /* Counters (exact: written under the GIL). */
    Py_ssize_t requests;
    Py_ssize_t batches;
    Py_ssize_t pipe_writes;
    Py_ssize_t empty_wakeups;
    Py_ssize_t empty_streak;
    Py_ssize_t skipped_wakeups;
    Py_ssize_t max_batch_seen;
    double longest_batch;
} RequestQueue;

static double
monotonic_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* -- the ring ------------------------------------------------------------------------ */

/* Make room for one more request. Allocates only (PyMem_* runs no Python
 * code and never releases the GIL), so it may run inside a step; on failure
 * sets MemoryError and changes nothing. */
static int
ring_reserve(RequestQueue *self)
{
    Py_ssize_t capacity = self->mask + 1;
    if (self->count < capacity) {
        return 0;
    }
    if (capacity > PY_SSIZE_T_MAX / 2 / (Py_ssize_t)sizeof(Request)) {
        PyErr_NoMemory();
        return -1;
    }
    Request *bigger = PyMem_Malloc(2 * capacity * sizeof(Request));
    if (bigger == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    /* Unwrap: the oldest request goes to slot 0. */
    Py_ssize_t first = capacity - self->head;
    memcpy(bigger, self->ring + self->head, first * sizeof(Request));
    memcpy(bigger + first, self->ring, self->head * sizeof(Request));
    PyMem_Free(self->ring);
    self->ring = bigger;
    self->head = 0;
    self->mask = 2 * capacity - 1;
    return 0;
}

/* Append a request; the ring takes over the three references. Call
 * ring_reserve first: this cannot fail. */
static inline void
ring_push(RequestQueue *self, PyObject *fn, PyObject *args, PyObject *reject)
{
    Request *slot = &self->ring[(self->head + self->count) & self->mask];
    slot->fn = fn;
    slot->args = args;
    slot->reject = reject;
    if (++self->count > self->peak) {
        self->peak = self->count;
    }
}

/* Take the oldest request (count > 0): its references move to the caller. */
static inline Request
ring_pop(RequestQueue *self)
{
    Request *slot = &self->ring[self->head];
    Request request = *slot;
    slot->fn = slot->args = slot->reject = NULL;
    self->head = (self->head + 1) & self->mask;
    self->count--;
    return request;
}

/* The drain emptied the ring (a step: frees memory only). A ring that grew
 * for a burst shrinks once a whole busy period (empty to empty) used less than
 * an eighth of it, to twice that period's peak; a steady flood keeps its ring
 * (shrinking at every empty made a flood regrow it, copies and page faults:
 * ~8% of its time here). Keeps the big one if the small one can't be had. */
static void
ring_maybe_shrink(RequestQueue *self)
{
    Py_ssize_t capacity = self->mask + 1, peak = self->peak;
    self->peak = 0;
    if (self->count || capacity <= SHRINK_ABOVE || peak >= capacity / 8) {
        return;
    }
    Py_ssize_t want = RING_INITIAL;
    while (want < 2 * peak) {
        want *= 2;
    }
    Request *small = PyMem_Malloc(want * sizeof(Request));
    if (small == NULL) {
        return;
    }
    PyMem_Free(self->ring);
    self->ring = small;
    self->head = 0;
    self->mask = want - 1;
}

/* -- the pipe ------------------------------------------------------------------------- */

static void
close_deferred(RequestQueue *self)
{
    int rfd = self->deferred_rfd, wfd = self->deferred_wfd;
    self->deferred_rfd = self->deferred_wfd = -1;
    if (rfd >= 0) {
        close(rfd);
    }
    if (wfd >= 0) {
        close(wfd);
    }
}

/* Producer, token just taken: wake the loop with one byte. Called with the
 * GIL held; releases it around write(2) unless hold_gil (see the header
 * comment: a producer with more to submit at once). The caller
 * holds a reference to self (it is running one of its methods). */
static void
write_pipe(RequestQueue *self, int hold_gil)
{
    self->pipe_writes++;
    int fd = self->wfd;
    if (fd < 0) {
        return; /* closed: the server stopped (or a forked child's copy) */
    }
    static const char byte = 0;
    ssize_t n;
    if (hold_gil) {
        do {
            n = write(fd, &byte, 1);
        } while (n < 0 && errno == EINTR);
        return;  /* no other thread ran: close_fds cannot have run meanwhile */
    }
    self->writers++;
    Py_BEGIN_ALLOW_THREADS
    do {
        n = write(fd, &byte, 1);
    } while (n < 0 && errno == EINTR);
    Py_END_ALLOW_THREADS
    /* EAGAIN: the pipe is full, so the loop has bytes to read and will wake. */
    if (--self->writers == 0) {
        close_deferred(self); /* close_fds ran meanwhile: its closes are ours */
    }
}

/* GIL held: close both ends now, or leave them to the last writer out. */
static void
close_fds(RequestQueue *self)
{
    int rfd = self->rfd, wfd = self->wfd;
    self->rfd = self->wfd = -1;
    if (self->writers > 0) {
        /* Both: closing only the read end would make the write fail with
         * EPIPE (and raise SIGPIPE where the application un-ignored it). */
        if (rfd >= 0) {
            self->deferred_rfd = rfd;
        }
        if (wfd >= 0) {
            self->deferred_wfd = wfd;
        }
        return;
    }
    if (rfd >= 0) {
        close(rfd);
    }
    if (wfd >= 0) {
        close(wfd);
    }
}

/* -- scheduling a drain ---------------------------------------------------------------- */

/* Loop thread, token held: run self._drain soon. On failure (the loop is
 * closed) the exception propagates and the token stays held. */
static int
schedule_drain(RequestQueue *self)
{
    if (self->call_soon == NULL || self->drain == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "the request queue is not attached to a loop");
        return -1;
    }
    PyObject *handle = PyObject_CallOneArg(self->call_soon, self->drain);
    if (handle == NULL) {
        return -1;
    }
    Py_DECREF(handle);
    return 0;
}

static PyObject *
raise_stopped(RequestQueue *self)
{
    /* ServerStopped is a class attribute of the Python subclass (_Stopped). */
    PyObject *cls = PyObject_GetAttrString((PyObject *)self, "_Stopped");
    if (cls == NULL) {
        return NULL;
    }
    PyErr_SetObject(cls, self->why);
    Py_DECREF(cls);
    return NULL;
}

/* -- submit ------------------------------------------------------------------------------ */

/* Queue fn(*argv[1:nargs]) (argv[0] is fn) with reject (borrowed, NULL for
 * None) and, if timed, the deadline `when`; then make sure a drain comes.
 * Returns 0, or -1 with an exception set (the request is not queued unless the
 * exception comes from the loop's call_soon, as in requests.PyRequestQueue). */
static int
enqueue(RequestQueue *self, PyObject *const *argv, Py_ssize_t nargs, PyObject *reject,
        int timed, double when, int more_coming)
{
    if (self->done) {
        raise_stopped(self);
        return -1;
    }
    /* What may run Python code or allocate GC objects (and so collect, and so
     * run a __del__ that releases the GIL) comes before the step. A new
     * reference, owned here until the push hands it to the ring. */
    PyObject *args = PyTuple_New(nargs - 1);
    if (args == NULL) {
        return -1;
    }
    for (Py_ssize_t i = 1; i < nargs; i++) {
        PyTuple_SET_ITEM(args, i - 1, Py_NewRef(argv[i]));
    }

    /* The step: done check, append, token. */
    if (self->done) {
        /* Closed while the tuple was made (a collection released the GIL). */
        Py_DECREF(args);
        raise_stopped(self);
        return -1;
    }
    if (ring_reserve(self) < 0) {
        Py_DECREF(args);
        return -1;
    }
    ring_push(self, Py_NewRef(argv[0]), args, reject == NULL ? NULL : Py_NewRef(reject));
    if (timed && when >= self->next_wakeup) {
        /* The loop wakes by then anyway and drains the queue (wake_at). */
        self->skipped_wakeups++;
        return 0;
    }
    if (self->token) {
        return 0; /* a drain is pending: it will see this request */
    }
    self->token = 1;
    /* End of the step: we hold the token, so we start the drain. */
    if (self->attached && PyThread_get_thread_ident() == self->thread) {
        return schedule_drain(self);
    }
    write_pipe(self, more_coming);
    return 0;
}

PyDoc_STRVAR(submit_doc,
"submit($self, fn, /, *args, reject=None, deadline=None)\n--\n\n"
"Run ``fn(*args)`` on the loop thread, soon, in submission (FIFO) order.\n\n"
"Safe from any thread. Raises ServerStopped once closed; a call that doesn't\n"
"raise is guaranteed to run ``fn`` or, if the queue closes first, to reject it\n"
"(``reject(exc)``; a WakeupHandle is woken with ``(False, exc)``). A request\n"
"with a ``deadline`` (time.monotonic) wakes the loop only if it would sleep past it.");

static PyObject *
RequestQueue_submit(RequestQueue *self, PyObject *const *argv, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *reject = NULL;   /* borrowed (from argv) */
    PyObject *deadline = NULL; /* borrowed */
    if (nargs < 1) {
        PyErr_SetString(PyExc_TypeError, "submit() missing the function to run");
        return NULL;
    }
    if (kwnames != NULL) {
        Py_ssize_t nkw = PyTuple_GET_SIZE(kwnames);
        for (Py_ssize_t i = 0; i < nkw; i++) {
            PyObject *name = PyTuple_GET_ITEM(kwnames, i);
            PyObject *value = argv[nargs + i];
            if (PyUnicode_CompareWithASCIIString(name, "reject") == 0) {
                reject = value;
            }
            else if (PyUnicode_CompareWithASCIIString(name, "deadline") == 0) {
                deadline = value;
            }
            else {
                PyErr_Format(PyExc_TypeError,
                             "submit() got an unexpected keyword argument '%U'", name);
                return NULL;
            }
        }
    }
    double when = 0.0;
    int timed = deadline != NULL && deadline != Py_None;
    if (timed) {
        when = PyFloat_AsDouble(deadline);
        if (when == -1.0 && PyErr_Occurred()) {
            return NULL;
        }
    }
    if (enqueue(self, argv, nargs, reject == Py_None ? NULL : reject, timed, when, 0) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

PyDoc_STRVAR(call_soon_doc,
"call_soon($self, fn, /, *args)\n--\n\n"
"``submit(fn, *args)`` without options: what IOServer.call_soon is bound to.");

static PyObject *
RequestQueue_call_soon(RequestQueue *self, PyObject *const *argv, Py_ssize_t nargs)
{
    if (nargs < 1) {
        PyErr_SetString(PyExc_TypeError, "call_soon() missing the function to run");
        return NULL;
    }
    if (enqueue(self, argv, nargs, NULL, 0, 0.0, 0) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* -- the loop side ----------------------------------------------------------------------- */

/* Log a request's exception (set on entry) through the Python subclass's
 * _request_failed(fn, exc), and clear it. The loop goes on whatever happens. */
static void
report_failure(RequestQueue *self, PyObject *fn)
{
    PyObject *value = ioserver_err_take();  /* owned here until dropped below */
    PyObject *res = PyObject_CallMethod((PyObject *)self, "_request_failed", "OO", fn,
                                       value != NULL ? value : Py_None);
    Py_XDECREF(value);
    if (res == NULL) {
        PyErr_WriteUnraisable((PyObject *)self);
    }
    else {
        Py_DECREF(res);
    }
}

PyDoc_STRVAR(drain_doc,
"_drain($self, /)\n--\n\n"
"Loop thread, token held: run queued requests in a bounded batch.");

static PyObject *
RequestQueue_drain(RequestQueue *self, PyObject *Py_UNUSED(ignored))
{
    if (self->done) {
        Py_RETURN_NONE; /* keep the token for good: nobody may write the pipe now */
    }
    double start = monotonic_now();
    Py_ssize_t n = 0;
    Py_ssize_t max_batch = self->max_batch;
    while (self->count > 0 && n < max_batch) {
        /* A step: the popped references are ours now. */
        Request request = ring_pop(self);
        n++;
        PyObject *res = PyObject_Vectorcall(request.fn, &PyTuple_GET_ITEM(request.args, 0),
                                            PyTuple_GET_SIZE(request.args), NULL);
        if (res == NULL) {
            /* BaseException too: fire and forget has nobody to hand it to,
             * and it must not end the loop thread. */
            report_failure(self, request.fn);
        }
        else {
            Py_DECREF(res);
        }
        Py_DECREF(request.fn);
        Py_DECREF(request.args);
        Py_XDECREF(request.reject);
        if (!(n & 63) && monotonic_now() - start > self->quantum) {
            break;
        }
    }
    self->requests += n;
    self->batches++;
    if (n > self->max_batch_seen) {
        self->max_batch_seen = n;
    }
    double spent = monotonic_now() - start;
    if (spent > self->longest_batch) {
        self->longest_batch = spent;
    }
    if (self->done) {
        Py_RETURN_NONE; /* a request closed us; keep the token */
    }
    /* The step "release the token, then look once more": with the GIL held
     * the look comes first and the token is released only if it finds
     * nothing; otherwise the token is kept and another drain scheduled. */
    if (self->count == 0) {
        self->token = 0;
        ring_maybe_shrink(self);
        Py_RETURN_NONE;
    }
    if (schedule_drain(self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

PyDoc_STRVAR(on_pipe_doc,
"_on_pipe($self, /)\n--\n\n"
"Loop thread: the pipe is readable; drain it, then the queue.");

static PyObject *
RequestQueue_on_pipe(RequestQueue *self, PyObject *Py_UNUSED(ignored))
{
    /* One read: a drain costs one byte, so more is only ever stray bytes. */
    if (self->rfd >= 0) {
        char buf[4096];
        ssize_t n;
        do {
            n = read(self->rfd, buf, sizeof(buf));
        } while (n < 0 && errno == EINTR);
    }
    if (self->count) {
        self->empty_streak = 0;
    }
    else {
        self->empty_wakeups++;
        if (++self->empty_streak == SPIN_THRESHOLD) {
            PyObject *res = PyObject_CallMethod((PyObject *)self, "_spinning", NULL);
            if (res == NULL) {
                PyErr_WriteUnraisable((PyObject *)self);
            }
            else {
                Py_DECREF(res);
            }
        }
    }
    if (self->token) {
        return RequestQueue_drain(self, NULL);
    }
    Py_RETURN_NONE; /* a byte nobody holding the token wrote (stray) */
}

PyDoc_STRVAR(wake_at_doc,
"wake_at($self, /)\n--\n\n"
"Loop thread: the armed wakeup (``next_wakeup``) fired; drain if needed.\n\n"
"Sets ``next_wakeup`` to +inf (\"nothing armed\") first.");

static PyObject *
RequestQueue_wake_at(RequestQueue *self, PyObject *Py_UNUSED(ignored))
{
    self->next_wakeup = Py_HUGE_VAL;
    if (self->token) {
        Py_RETURN_NONE;
    }
    self->token = 1;
    return RequestQueue_drain(self, NULL);
}

PyDoc_STRVAR(attach_core_doc,
"_attach(loop, drain=None, /)\n--\n\n"
"Loop thread: remember the loop, its call_soon and this thread; ``drain`` is what\n"
"the loop schedules to continue draining (the watchdog's guarded _drain), else _drain.");

static PyObject *
RequestQueue_attach_core(RequestQueue *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "_attach(loop, drain=None)");
        return NULL;
    }
    PyObject *loop = args[0];
    PyObject *call_soon = PyObject_GetAttrString(loop, "call_soon");
    if (call_soon == NULL) {
        return NULL;
    }
    PyObject *drain = nargs > 1 && args[1] != Py_None
                          ? Py_NewRef(args[1])
                          : PyObject_GetAttrString((PyObject *)self, "_drain");
    if (drain == NULL) {
        Py_DECREF(call_soon);
        return NULL;
    }
    /* The new references move into self; the old ones drop after the step. */
    PyObject *old_loop = self->loop, *old_call_soon = self->call_soon, *old_drain = self->drain;
    self->loop = Py_NewRef(loop);
    self->call_soon = call_soon;
    self->drain = drain;
    self->thread = PyThread_get_thread_ident();
    self->attached = 1;
    Py_XDECREF(old_loop);
    Py_XDECREF(old_call_soon);
    Py_XDECREF(old_drain);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(take_all_doc,
"_take_all($self, why=None, /)\n--\n\n"
"Refuse every later submit and take every queued request, in one step.\n\n"
"Returns the requests as a list of ``(fn, args, reject)`` tuples, oldest\n"
"first; ``why`` (a str) replaces what refused submits raise with.");

static PyObject *
RequestQueue_take_all(RequestQueue *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "_take_all() takes at most one argument");
        return NULL;
    }
    PyObject *why = nargs == 1 && args[0] != Py_None ? args[0] : NULL;
    if (why != NULL && !PyUnicode_Check(why)) {
        PyErr_SetString(PyExc_TypeError, "_take_all(): why must be a str");
        return NULL;
    }
    /* Room for the moved references, allocated before the step (PyMem_Malloc
     * runs no collection, so nothing can be queued between it and the step).
     * Three slots per request: fn, args, reject (None for NULL). */
    Py_ssize_t want = self->count;
    PyObject **items = PyMem_Malloc((want ? want : 1) * 3 * sizeof(PyObject *));
    if (items == NULL) {
        return PyErr_NoMemory();
    }
    /* The step: done, new why, every request moved out of the ring into items. */
    PyObject *old_why = NULL;
    self->done = 1;
    if (why != NULL) {
        old_why = self->why;
        self->why = Py_NewRef(why);
    }
    Py_ssize_t taken = 0;
    while (self->count) {
        Request request = ring_pop(self);
        items[3 * taken] = request.fn;
        items[3 * taken + 1] = request.args;
        items[3 * taken + 2] = request.reject != NULL ? request.reject : Py_NewRef(Py_None);
        taken++;
    }
    /* After the step: build the result; items' references move into tuples. */
    Py_XDECREF(old_why);
    PyObject *list = PyList_New(0);
    int failed = list == NULL;
    for (Py_ssize_t i = 0; i < taken; i++) {
        PyObject **r = &items[3 * i];
        if (!failed) {
            PyObject *tuple = PyTuple_New(3);
            if (tuple != NULL) {
                PyTuple_SET_ITEM(tuple, 0, r[0]);
                PyTuple_SET_ITEM(tuple, 1, r[1]);
                PyTuple_SET_ITEM(tuple, 2, r[2]);
                if (PyList_Append(list, tuple) < 0) {
                    failed = 1;
                }
                Py_DECREF(tuple);
                continue;
            }
            failed = 1;
        }
        /* Out of memory: these requests can't be handed back; drop them. */
        Py_DECREF(r[0]);
        Py_DECREF(r[1]);
        Py_DECREF(r[2]);
    }
    PyMem_Free(items);
    if (failed) {
        Py_XDECREF(list);
        return NULL;
    }
    return list;
}

PyDoc_STRVAR(close_fds_doc,
"_close_fds($self, forked=False, /)\n--\n\n"
"Close both ends of the pipe (idempotent); a producer writing the pipe right\n"
"now closes them when its write returns. ``forked``: in a forked child, whose\n"
"copies of such producers don't exist, close at once.");

static PyObject *
RequestQueue_close_fds(RequestQueue *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "_close_fds() takes at most one argument");
        return NULL;
    }
    int forked = 0;
    if (nargs == 1 && (forked = PyObject_IsTrue(args[0])) < 0) {
        return NULL;
    }
    if (forked) {
        /* The threads that were inside write(2) stayed in the parent. */
        self->writers = 0;
        close_deferred(self);
    }
    close_fds(self);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(pending_doc,
"pending($self, /)\n--\n\n"
"Requests queued now (a hint: exact only on the loop thread).");

static PyObject *
RequestQueue_pending(RequestQueue *self, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromSsize_t(self->count);
}

/* -- the type ------------------------------------------------------------------------------ */

static PyObject *
RequestQueue_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"max_batch", "quantum", NULL};
    Py_ssize_t max_batch = 1024;
    double quantum = 0.002;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|$nd:RequestQueue", kwlist, &max_batch,
                                     &quantum)) {
        return NULL;
    }
    if (max_batch < 1 || !(quantum >= 0.0)) {
        PyErr_Format(PyExc_ValueError,
                     "RequestQueue: max_batch must be >= 1 (got %zd) and quantum a number >= 0",
                     max_batch);
        return NULL;
    }
    RequestQueue *self = (RequestQueue *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    /* tp_alloc zeroed everything: no requests, no token, no loop. */
    self->rfd = self->wfd = -1;
    self->deferred_rfd = self->deferred_wfd = -1;
    self->max_batch = max_batch;
    self->quantum = quantum;
    self->next_wakeup = Py_HUGE_VAL;
    self->why = PyUnicode_FromString("the I/O server has stopped");
    self->ring = PyMem_Malloc(RING_INITIAL * sizeof(Request));
    if (self->why == NULL || self->ring == NULL) {
        if (self->ring == NULL) {
            PyErr_NoMemory();
        }
        Py_DECREF(self);
        return NULL;
    }
    self->mask = RING_INITIAL - 1;
    int fds[2];
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(self);
        return NULL;
    }
    self->rfd = fds[0];
    self->wfd = fds[1];
    return (PyObject *)self;
}

static int
RequestQueue_traverse(RequestQueue *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self)); /* a heap type */
    for (Py_ssize_t i = 0; i < self->count; i++) {
        Request *r = &self->ring[(self->head + i) & self->mask];
        Py_VISIT(r->fn);
        Py_VISIT(r->args);
        Py_VISIT(r->reject);
    }
    Py_VISIT(self->loop);
    Py_VISIT(self->call_soon);
    Py_VISIT(self->drain);
    Py_VISIT(self->why);
    return 0;
}

static int
RequestQueue_clear(RequestQueue *self)
{
    /* Pop in steps: the decrefs may run code that submits to this queue. */
    while (self->count) {
        Request r = ring_pop(self);
        Py_DECREF(r.fn);
        Py_DECREF(r.args);
        Py_XDECREF(r.reject);
    }
    Py_CLEAR(self->drain);
    Py_CLEAR(self->call_soon);
    Py_CLEAR(self->loop);
    self->attached = 0;
    return 0;
}

static void
RequestQueue_dealloc(RequestQueue *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->weakrefs != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    self->done = 1;
    (void)RequestQueue_clear(self);
    Py_CLEAR(self->why);
    /* No writer is left: each held a reference to self. */
    close_fds(self);
    close_deferred(self);
    PyMem_Free(self->ring);
    self->ring = NULL;
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyObject *
RequestQueue_get_done(RequestQueue *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->done);
}

static PyObject *
RequestQueue_get_loop(RequestQueue *self, void *Py_UNUSED(closure))
{
    return Py_NewRef(self->loop != NULL ? self->loop : Py_None);
}

static PyObject *
RequestQueue_get_thread(RequestQueue *self, void *Py_UNUSED(closure))
{
    if (!self->attached) {
        Py_RETURN_NONE;
    }
    return PyLong_FromUnsignedLong(self->thread);
}

static PyObject *
RequestQueue_get_token(RequestQueue *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->token);
}

static PyGetSetDef RequestQueue_getset[] = {
    {"done", (getter)RequestQueue_get_done, NULL,
     PyDoc_STR("Whether the queue refuses new requests."), NULL},
    {"_loop", (getter)RequestQueue_get_loop, NULL, PyDoc_STR("The attached loop, or None."),
     NULL},
    {"_thread", (getter)RequestQueue_get_thread, NULL,
     PyDoc_STR("The loop thread's ident, or None before attach."), NULL},
    {"_token", (getter)RequestQueue_get_token, NULL,
     PyDoc_STR("Whether a drain is pending (a hint)."), NULL},
    {NULL},
};

#define COUNTER(name, doc) \
    {#name, T_PYSSIZET, offsetof(RequestQueue, name), 0, PyDoc_STR(doc)}

static PyMemberDef RequestQueue_members[] = {
    {"max_batch", T_PYSSIZET, offsetof(RequestQueue, max_batch), 0,
     PyDoc_STR("Most requests one drain runs before it lets I/O callbacks run.")},
    {"quantum", T_DOUBLE, offsetof(RequestQueue, quantum), 0,
     PyDoc_STR("Longest a drain runs (seconds), checked every 64 requests.")},
    {"next_wakeup", T_DOUBLE, offsetof(RequestQueue, next_wakeup), 0,
     PyDoc_STR("The monotonic time the loop has a wakeup armed for (inf: none).")},
    {"longest_batch", T_DOUBLE, offsetof(RequestQueue, longest_batch), 0,
     PyDoc_STR("The longest drain (seconds).")},
    {"_why", T_OBJECT_EX, offsetof(RequestQueue, why), READONLY,
     PyDoc_STR("What a refused submit raises ServerStopped with.")},
    {"_rfd", T_INT, offsetof(RequestQueue, rfd), READONLY,
     PyDoc_STR("The pipe's read end (-1: closed).")},
    {"_wfd", T_INT, offsetof(RequestQueue, wfd), READONLY,
     PyDoc_STR("The pipe's write end (-1: closed).")},
    COUNTER(requests, "Requests run."),
    COUNTER(batches, "Drains run."),
    COUNTER(pipe_writes, "Bytes written to the pipe (wakeups paid for)."),
    COUNTER(empty_wakeups, "Pipe wakeups that found nothing queued."),
    {"_empty_streak", T_PYSSIZET, offsetof(RequestQueue, empty_streak), 0,
     PyDoc_STR("Empty wakeups in a row.")},
    COUNTER(skipped_wakeups, "Timer requests that needed no wakeup."),
    COUNTER(max_batch_seen, "The largest drain."),
    {"__weaklistoffset__", T_PYSSIZET, offsetof(RequestQueue, weakrefs), READONLY},
    {NULL},
};

#undef COUNTER

static PyMethodDef RequestQueue_methods[] = {
    {"submit", (PyCFunction)(void (*)(void))RequestQueue_submit,
     METH_FASTCALL | METH_KEYWORDS, submit_doc},
    {"call_soon", (PyCFunction)(void (*)(void))RequestQueue_call_soon, METH_FASTCALL,
     call_soon_doc},
    {"_drain", (PyCFunction)RequestQueue_drain, METH_NOARGS, drain_doc},
    {"_on_pipe", (PyCFunction)RequestQueue_on_pipe, METH_NOARGS, on_pipe_doc},
    {"wake_at", (PyCFunction)RequestQueue_wake_at, METH_NOARGS, wake_at_doc},
    {"_attach", (PyCFunction)(void (*)(void))RequestQueue_attach_core, METH_FASTCALL,
     attach_core_doc},
    {"_take_all", (PyCFunction)(void (*)(void))RequestQueue_take_all, METH_FASTCALL,
     take_all_doc},
    {"_close_fds", (PyCFunction)(void (*)(void))RequestQueue_close_fds, METH_FASTCALL,
     close_fds_doc},
    {"pending", (PyCFunction)RequestQueue_pending, METH_NOARGS, pending_doc},
    {NULL},
};

PyDoc_STRVAR(RequestQueue_doc,
"RequestQueue(*, max_batch=1024, quantum=0.002)\n--\n\n"
"The request queue of one loop and the pipe that wakes it: the compiled core of\n"
"requests.NativeRequestQueue. Subclasses provide _Stopped (the exception class),\n"
"_request_failed(fn, exc) and _spinning().");

static PyType_Slot RequestQueue_slots[] = {
    {Py_tp_doc, (void *)RequestQueue_doc},
    {Py_tp_new, RequestQueue_new},
    {Py_tp_dealloc, RequestQueue_dealloc},
    {Py_tp_traverse, RequestQueue_traverse},
    {Py_tp_clear, RequestQueue_clear},
    {Py_tp_methods, RequestQueue_methods},
    {Py_tp_members, RequestQueue_members},
    {Py_tp_getset, RequestQueue_getset},
    {0, NULL},
};

static PyType_Spec RequestQueue_spec = {
    .name = "ioserver._native.RequestQueue",
    .basicsize = sizeof(RequestQueue),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = RequestQueue_slots,
};

static PyTypeObject *RequestQueueType;  /* owned by the module, and here */

int
ioserver_is_request_queue(PyObject *o)
{
    return RequestQueueType != NULL && PyObject_TypeCheck(o, RequestQueueType);
}

int
ioserver_queue_submit(PyObject *queue, PyObject *const *argv, Py_ssize_t nargs, int more_coming)
{
    return enqueue((RequestQueue *)queue, argv, nargs, NULL, 0, 0.0, more_coming);
}

int
ioserver_init_queue(PyObject *module)
{
    PyObject *type = PyType_FromModuleAndSpec(module, &RequestQueue_spec, NULL);
    if (type == NULL) {
        return -1;
    }
    int rc = PyModule_AddObjectRef(module, "RequestQueue", type);
    if (rc < 0) {
        Py_DECREF(type);
        return -1;
    }
    RequestQueueType = (PyTypeObject *)type;  /* kept: the module lives as long */
    return 0;
}
