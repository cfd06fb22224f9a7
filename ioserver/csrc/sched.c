/* The native sched part: WakeupHandle and ThreadWakeup (see sched/_handles.py, the reference).
 *
 * Claim. A test-and-set of a char under the GIL: no code runs between the
 * test and the set, so exactly one party wins it.
 *
 * Parking. Each thread has one park lock (ioserver_ParkLock), kept held while
 * the thread is not parked; a ThreadWakeup made by the thread refers to it. A
 * sleeper acquires it with the GIL released; the claim's winner releases it
 * once (unpark). Every release is consumed before the parking call returns:
 * by the wait itself, or, when the sleeper's wait ended otherwise (timeout,
 * signal) and a waker won the claim, by an extra blocking acquire that the
 * waker's release ends at once (the waker does nothing that blocks between
 * claim and unpark). So the next park of the thread never returns early.
 * `consumed` records that the release was taken, so abort() never waits for a
 * release that is gone.
 *
 * The lock of a thread lives in its thread-state dict (a capsule, freed with
 * the thread's state) and is cached in thread-specific storage for speed.
 */
#include "native.h"

#include <sched.h>

PyTypeObject *ioserver_HandleType = NULL;
PyTypeObject *ioserver_ThreadWakeupType = NULL;
unsigned long ioserver_fork_gen = 0;

static Py_tss_t park_key = Py_tss_NEEDS_INIT;
static PyObject *park_dict_key = NULL;  /* owned: the thread-dict key of the capsule */
static unsigned long main_ident = 0;

/* The original park/unpark descriptors of ThreadWakeup (owned), and the type's
 * version tag at which they were last found unchanged. */
static PyObject *orig_park = NULL, *orig_unpark = NULL;
static PyObject *str_park = NULL, *str_unpark = NULL;
static unsigned int tw_ok_tag = 0;

int
ioserver_is_main_thread(void)
{
    return PyThread_get_thread_ident() == main_ident;
}

/* ---- park locks ---------------------------------------------------------- */

static void
parklock_decref(ioserver_ParkLock *pl)
{
    if (--pl->refs == 0) {
        PyThread_free_lock(pl->lock);
        PyMem_RawFree(pl);
    }
}

static void
parklock_capsule_free(PyObject *capsule)
{
    ioserver_ParkLock *pl = PyCapsule_GetPointer(capsule, "ioserver.parklock");
    if (pl == NULL) {
        PyErr_Clear();
        return;
    }
    /* The thread is gone (or its state is being cleared): forget the cache. */
    if (PyThread_tss_get(&park_key) == pl) {
        (void)PyThread_tss_set(&park_key, NULL);  /* only ever fails to allocate */
    }
    PyObject *cached = pl->cached;  /* its handle holds a ref on pl: drop it first */
    pl->cached = NULL;
    Py_XDECREF(cached);
    parklock_decref(pl);
}

/* The calling thread's park lock (borrowed: the thread's capsule owns it), or
 * NULL with an exception. */
static ioserver_ParkLock *
parklock_get(void)
{
    ioserver_ParkLock *pl = PyThread_tss_get(&park_key);
    if (pl != NULL) {
        return pl;
    }
    PyObject *dict = PyThreadState_GetDict();
    if (dict == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "no thread state dict");
        return NULL;
    }
    PyObject *capsule = PyDict_GetItemWithError(dict, park_dict_key);  /* borrowed */
    if (capsule != NULL) {
        pl = PyCapsule_GetPointer(capsule, "ioserver.parklock");
        if (pl == NULL) {
            return NULL;
        }
        (void)PyThread_tss_set(&park_key, pl);  /* failed: the dict lookup next time */
        return pl;
    }
    if (PyErr_Occurred()) {
        return NULL;
    }
    pl = PyMem_RawMalloc(sizeof(*pl));
    if (pl == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    pl->lock = PyThread_allocate_lock();
    if (pl->lock == NULL) {
        PyMem_RawFree(pl);
        PyErr_SetString(PyExc_RuntimeError, "cannot allocate a lock");
        return NULL;
    }
    PyThread_acquire_lock(pl->lock, WAIT_LOCK);  /* held while not parked */
    pl->refs = 1;  /* the thread's: moved into the capsule below */
    pl->banked = 0;
    pl->cached = NULL;
    capsule = PyCapsule_New(pl, "ioserver.parklock", parklock_capsule_free);
    if (capsule == NULL) {
        PyThread_free_lock(pl->lock);
        PyMem_RawFree(pl);
        return NULL;
    }
    int rc = PyDict_SetItem(dict, park_dict_key, capsule);
    Py_DECREF(capsule);  /* the dict owns it now (or it was freed, with pl) */
    if (rc < 0) {
        return NULL;
    }
    (void)PyThread_tss_set(&park_key, pl);  /* failed: the dict lookup next time */
    return pl;
}

/* ---- WakeupHandle -------------------------------------------------------- */

static PyObject *
handle_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    ioserver_Handle *self = (ioserver_Handle *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->value = Py_NewRef(Py_None);
    self->index = 0;
    self->claimed = 0;
    self->has_index = 0;
    return (PyObject *)self;
}

static int
handle_init(PyObject *self, PyObject *args, PyObject *kwds)
{
    return 0;  /* accept anything: subclasses have their own __init__ */
}

static int
handle_traverse(ioserver_Handle *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->value);
    return 0;
}

static int
handle_clear(ioserver_Handle *self)
{
    Py_CLEAR(self->value);
    return 0;
}

static void
handle_dealloc(ioserver_Handle *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    handle_clear(self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyObject *
handle_claim(PyObject *self, PyObject *unused)
{
    return PyBool_FromLong(ioserver_claim(self));
}

static PyObject *
handle_unpark(PyObject *self, PyObject *unused)
{
    PyErr_SetString(PyExc_NotImplementedError, "WakeupHandle.unpark is abstract");
    return NULL;
}

static PyObject *
handle_wake(PyObject *self, PyObject *unused)
{
    if (!ioserver_claim(self)) {
        Py_RETURN_FALSE;
    }
    if (ioserver_native_unpark_ok(self)) {
        ioserver_tw_unpark(self);  /* claim and unpark in one step */
    }
    else {
        PyObject *r = PyObject_CallMethodNoArgs(self, str_unpark);
        if (r == NULL) {
            return NULL;
        }
        Py_DECREF(r);
    }
    Py_RETURN_TRUE;
}

static PyObject *
handle_get_claimed(ioserver_Handle *self, void *closure)
{
    return PyBool_FromLong(self->claimed);
}

static PyObject *
handle_get_payload(ioserver_Handle *self, void *closure)
{
    if (self->has_index) {
        return Py_BuildValue("(nO)", self->index, self->value);
    }
    return Py_NewRef(self->value);
}

static int
handle_set_payload(ioserver_Handle *self, PyObject *value, void *closure)
{
    if (value == NULL) {
        value = Py_None;
    }
    PyObject *old = self->value;
    self->value = Py_NewRef(value);
    self->has_index = 0;
    Py_DECREF(old);  /* after the store: a __del__ here sees the new payload */
    return 0;
}

static PyMethodDef handle_methods[] = {
    {"claim", handle_claim, METH_NOARGS,
     "Try to take the right to end this block; True for exactly one caller."},
    {"unpark", handle_unpark, METH_NOARGS,
     "Make the sleeper runnable. Only the winner of claim() calls this."},
    {"wake", handle_wake, METH_NOARGS,
     "Wake the blocked task; True if this call did, False if it was already ended."},
    {NULL},
};

static PyGetSetDef handle_getset[] = {
    {"claimed", (getter)handle_get_claimed, NULL,
     "Whether some party has claimed the handle (a hint: may change at once).", NULL},
    {"payload", (getter)handle_get_payload, (setter)handle_set_payload,
     "What the claim's winner left for the sleeper.", NULL},
    {NULL},
};

static PyType_Slot handle_slots[] = {
    {Py_tp_doc, "Wakes the one blocking invocation it was made for, at most once."},
    {Py_tp_new, handle_new},
    {Py_tp_init, handle_init},
    {Py_tp_dealloc, handle_dealloc},
    {Py_tp_traverse, handle_traverse},
    {Py_tp_clear, handle_clear},
    {Py_tp_methods, handle_methods},
    {Py_tp_getset, handle_getset},
    {0, NULL},
};

static PyType_Spec handle_spec = {
    .name = "ioserver._native.WakeupHandle",
    .basicsize = sizeof(ioserver_Handle),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = handle_slots,
};

/* ---- ThreadWakeup --------------------------------------------------------- */

int
ioserver_native_unpark_ok(PyObject *h)
{
    PyTypeObject *tp = ioserver_ThreadWakeupType;
    if (!Py_IS_TYPE(h, tp)) {
        return 0;
    }
    if (tw_ok_tag != 0 && (tp->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG)
        && tp->tp_version_tag == tw_ok_tag) {
        return 1;
    }
    /* Dict lookups with str keys in a type's dict: no Python code runs. */
    PyObject *park = PyDict_GetItemWithError(tp->tp_dict, str_park);      /* borrowed */
    PyObject *unpark = PyDict_GetItemWithError(tp->tp_dict, str_unpark);  /* borrowed */
    if (park != orig_park || unpark != orig_unpark) {
        return 0;  /* replaced (a test's hook): go through the methods */
    }
    if (tp->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG) {
        tw_ok_tag = tp->tp_version_tag;
    }
    return 1;
}

/* ---- deferred unparks: one wakeup per I/O batch ---------------------------------
 *
 * A read callback on the I/O thread that hands a message to a parked thread
 * used to release that thread's park lock at once: the thread woke on the
 * other core (or preempted the I/O thread on this one), found the GIL taken by
 * the I/O thread's next callback, and slept again on the GIL; every callback
 * of the batch then signalled it once more. So while ioserver_defer_unparks is
 * in force (from a driver's read callback until `flush` runs, which it
 * schedules with loop.call_soon: right after the loop's current batch of I/O
 * callbacks, before it polls again), the I/O thread's native unparks are
 * queued here, and `flush` releases them all, once, when the loop is about to
 * let go of the GIL. The claim and the payload are set as before, in the
 * step; only the release waits. A sleeper whose time runs out meanwhile
 * loses the claim and waits for the release (ioserver_tw_consume), as it
 * does for any waker that won. The server calls flush after its loop stops,
 * so no release is left behind. Under the GIL; the queue holds a reference
 * to each handle. */
static unsigned long defer_ident;  /* the thread whose unparks are queued; 0: none */
static PyObject **deferred;        /* owned references */
static Py_ssize_t ndeferred, deferred_cap;
static PyObject *flush_fn;         /* owned: the module's _flush_unparks */
static PyObject *str_call_soon;

/* Queue h's release (inside a step: PyMem only): 1, or 0 (out of memory: release now). */
static int
defer_push(PyObject *h)
{
    if (ndeferred == deferred_cap) {
        Py_ssize_t cap = deferred_cap ? deferred_cap * 2 : 16;
        PyObject **items = PyMem_Realloc(deferred, (size_t)cap * sizeof(PyObject *));
        if (items == NULL) {
            return 0;
        }
        deferred = items;
        deferred_cap = cap;
    }
    deferred[ndeferred++] = Py_NewRef(h);
    return 1;
}

void
ioserver_tw_unpark(PyObject *h)
{
    ioserver_ThreadWakeup *tw = (ioserver_ThreadWakeup *)h;
    if (defer_ident != 0 && defer_ident == PyThread_get_thread_ident() && defer_push(h)) {
        return;
    }
    PyThread_release_lock(tw->park->lock);
    tw->unparked = 1;
}

int
ioserver_deferring_unparks(void)
{
    return defer_ident != 0 && defer_ident == PyThread_get_thread_ident();
}

int
ioserver_defer_unparks(PyObject *loop)
{
    unsigned long me = PyThread_get_thread_ident();
    if (defer_ident == me) {
        return 0;
    }
    PyObject *r = PyObject_CallMethodOneArg(loop, str_call_soon, flush_fn);
    if (r == NULL) {
        return -1;  /* a closed loop: unpark at once, as before */
    }
    Py_DECREF(r);
    defer_ident = me;
    return 0;
}

/* Release every queued unpark (one step), then drop the references. */
static PyObject *
flush_unparks(PyObject *module, PyObject *unused)
{
    defer_ident = 0;
    PyObject **items = deferred;
    Py_ssize_t n = ndeferred, cap = deferred_cap;
    deferred = NULL;
    ndeferred = deferred_cap = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        ioserver_ThreadWakeup *tw = (ioserver_ThreadWakeup *)items[i];
        PyThread_release_lock(tw->park->lock);
        tw->unparked = 1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_DECREF(items[i]);  /* the sleeper holds its own: frees nothing */
    }
    if (deferred == NULL) {
        deferred = items;  /* keep the buffer */
        deferred_cap = cap;
    }
    else {
        PyMem_Free(items);
    }
    Py_RETURN_NONE;
}

PyObject *
ioserver_tw_new(int selfstore)
{
    ioserver_ParkLock *pl = parklock_get();  /* borrowed */
    if (pl == NULL) {
        return NULL;
    }
    ioserver_ThreadWakeup *tw = PyObject_GC_New(ioserver_ThreadWakeup, ioserver_ThreadWakeupType);
    if (tw == NULL) {
        return NULL;
    }
    /* PyObject_GC_New already took the instance's reference to its heap type. */
    tw->base.value = Py_NewRef(Py_None);
    tw->base.index = 0;
    tw->base.claimed = 0;
    tw->base.has_index = 0;
    tw->park = pl;
    pl->refs++;
    tw->unparked = tw->consumed = tw->self_claimed = 0;
    tw->selfstore = (char)selfstore;
    PyObject_GC_Track(tw);
    return (PyObject *)tw;
}

PyObject *
ioserver_tw_get(int selfstore)
{
    ioserver_ParkLock *pl = parklock_get();  /* borrowed */
    if (pl == NULL) {
        return NULL;
    }
    ioserver_ThreadWakeup *tw = (ioserver_ThreadWakeup *)pl->cached;
    if (tw != NULL && Py_REFCNT(tw) == 1 && !(tw->unparked && !tw->consumed)) {
        /* Only the cache refers to it (no queue, no waker) and no release of
         * its is outstanding: reset it. */
        PyObject *old = tw->base.value;
        tw->base.value = Py_NewRef(Py_None);
        tw->base.index = 0;
        tw->base.claimed = tw->base.has_index = 0;
        tw->unparked = tw->consumed = tw->self_claimed = 0;
        tw->selfstore = (char)selfstore;
        Py_DECREF(old);  /* a message or a mark the last park left (not in a step) */
        return Py_NewRef((PyObject *)tw);
    }
    PyObject *h = ioserver_tw_new(selfstore);
    if (h == NULL) {
        return NULL;
    }
    if (pl->cached == NULL) {
        pl->cached = Py_NewRef(h);  /* the cache's reference */
    }
    return h;
}

void
ioserver_tw_put(PyObject *h)
{
    ioserver_Handle *hd = (ioserver_Handle *)h;
    PyObject *old = hd->value;
    hd->value = Py_NewRef(Py_None);
    hd->has_index = 0;
    Py_DECREF(old);
    Py_DECREF(h);
}

static PyObject *
tw_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    if ((kwds != NULL && PyDict_GET_SIZE(kwds) != 0) || PyTuple_GET_SIZE(args) != 0) {
        PyErr_Format(PyExc_TypeError, "%s() takes no arguments", type->tp_name);
        return NULL;
    }
    if (type == ioserver_ThreadWakeupType) {
        return ioserver_tw_new(0);
    }
    ioserver_ParkLock *pl = parklock_get();
    if (pl == NULL) {
        return NULL;
    }
    ioserver_ThreadWakeup *tw = (ioserver_ThreadWakeup *)handle_new(type, args, kwds);
    if (tw == NULL) {
        return NULL;
    }
    tw->park = pl;
    pl->refs++;
    tw->unparked = tw->consumed = tw->self_claimed = tw->selfstore = 0;
    return (PyObject *)tw;
}

static void
tw_dealloc(ioserver_ThreadWakeup *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->park != NULL) {
        if (self->unparked && !self->consumed) {
            /* Woken, but nobody parked to take the release: take it now, so
             * the thread's next park does not return at once. */
            if (self->park->banked > 0) {
                self->park->banked--;
            }
            else {
                PyThread_acquire_lock(self->park->lock, NOWAIT_LOCK);
            }
        }
        parklock_decref(self->park);
        self->park = NULL;
    }
    handle_clear(&self->base);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyObject *
tw_unpark_meth(PyObject *self, PyObject *unused)
{
    ioserver_ThreadWakeup *tw = (ioserver_ThreadWakeup *)self;
    if (!tw->base.claimed || tw->unparked) {
        /* A second release would leave the park lock's semaphore at 2: the
         * thread's next park would return at once. */
        PyErr_SetString(PyExc_RuntimeError,
                        tw->unparked ? "ThreadWakeup already unparked"
                                     : "unpark() without a won claim()");
        return NULL;
    }
    ioserver_tw_unpark(self);
    Py_RETURN_TRUE;  /* the handle contract: True, the sleeper will run */
}

static long long now_us(void);

int
ioserver_tw_wait(PyObject *h, long long us)
{
    ioserver_ThreadWakeup *tw = (ioserver_ThreadWakeup *)h;
    ioserver_ParkLock *pl = tw->park;  /* kept alive by tw's reference */
    PyLockStatus r;
    if (us < 0) {
        us = -1;
    }
    else if (us > PY_TIMEOUT_MAX) {
        us = PY_TIMEOUT_MAX;
    }
    long long end = us > 0 ? now_us() + us : 0;
    for (;;) {
        if (tw->unparked && pl->banked > 0) {
            pl->banked--;  /* a nested wait took our release for us */
            tw->consumed = 1;
            return IOSERVER_PARK_WOKEN;
        }
        if (us == 0) {
            r = PyThread_acquire_lock_timed(pl->lock, 0, 0);
        }
        else {
            /* Only the main thread runs signal handlers: elsewhere an EINTR
             * (a signal the kernel delivered to this thread) must not end
             * the wait, or the caller withdraws and re-queues at the tail. */
            int intr = ioserver_is_main_thread();
            Py_BEGIN_ALLOW_THREADS
            r = PyThread_acquire_lock_timed(pl->lock, (PY_TIMEOUT_T)us, intr);
            Py_END_ALLOW_THREADS
        }
        if (r == PY_LOCK_ACQUIRED) {
            if (!tw->unparked) {
                /* Another handle's release (its unpark set `unparked` under
                 * the GIL with the release): keep it for that handle, and
                 * wait on for ours. */
                pl->banked++;
                if (us > 0) {
                    us = end - now_us();
                    if (us < 0) {
                        us = 0;
                    }
                }
                if (us != 0) {
                    continue;
                }
                goto timed_out;
            }
            tw->consumed = 1;
            return IOSERVER_PARK_WOKEN;
        }
        if (r == PY_LOCK_INTR) {
            return IOSERVER_PARK_INTR;
        }
        break;
    }
timed_out:
    if (ioserver_claim(h)) {
        return IOSERVER_PARK_TIMEOUT;  /* nobody can wake the handle any more */
    }
    /* A waker won the claim just as the time ran out (or it claimed under the
     * GIL before we got it back): its release came or comes at once. */
    ioserver_tw_consume(h);
    return IOSERVER_PARK_WOKEN;
}

void
ioserver_tw_consume(PyObject *h)
{
    ioserver_ThreadWakeup *tw = (ioserver_ThreadWakeup *)h;
    ioserver_ParkLock *pl = tw->park;
    /* Called only once a waker has claimed h: its release came or comes. */
    while (!tw->consumed) {
        if (tw->unparked && pl->banked > 0) {
            pl->banked--;
            tw->consumed = 1;
            return;
        }
        if (!PyThread_acquire_lock(pl->lock, NOWAIT_LOCK)) {
            Py_BEGIN_ALLOW_THREADS
            PyThread_acquire_lock(pl->lock, WAIT_LOCK);
            Py_END_ALLOW_THREADS
        }
        if (tw->unparked) {
            tw->consumed = 1;
        }
        else {
            pl->banked++;  /* another handle's release: keep it for that one */
        }
    }
}

/* Monotonic microseconds. */
static long long
now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static PyObject *
tw_park(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    ioserver_ThreadWakeup *tw = (ioserver_ThreadWakeup *)self;
    PyObject *timeout = nargs > 0 ? args[0] : Py_None;
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "park() takes at most one argument");
        return NULL;
    }
    long long deadline = -1;
    if (timeout != Py_None) {
        double t = PyFloat_AsDouble(timeout);
        if (t == -1.0 && PyErr_Occurred()) {
            return NULL;
        }
        if (t != t) {
            PyErr_SetString(PyExc_ValueError, "timeout is NaN");
            return NULL;
        }
        /* > ~31 years: no deadline (avoids float->int and now+t overflow, UB). */
        deadline = t > 1e9 ? -1 : t > 0 ? now_us() + (long long)(t * 1e6) : 0;
    }
    if (tw->consumed) {
        Py_RETURN_TRUE;  /* woken already (a second park of the same block) */
    }
    for (;;) {
        long long us = -1;
        if (deadline == 0) {
            us = 0;
        }
        else if (deadline > 0) {
            us = deadline - now_us();
            if (us <= 0) {
                us = 0;
            }
        }
        int r = ioserver_tw_wait(self, us);
        if (r == IOSERVER_PARK_WOKEN) {
            Py_RETURN_TRUE;
        }
        if (r == IOSERVER_PARK_TIMEOUT) {
            Py_RETURN_FALSE;
        }
        /* Interrupted: run the signal handlers; one that raises ends the park. */
        if (PyErr_CheckSignals() < 0) {
            if (ioserver_claim(self)) {
                tw->self_claimed = 1;  /* abort() will report it as ours */
            }
            else {
                ioserver_tw_consume(self);  /* the waker's payload stands */
            }
            return NULL;
        }
    }
}

static PyObject *
tw_abort(PyObject *self, PyObject *unused)
{
    ioserver_ThreadWakeup *tw = (ioserver_ThreadWakeup *)self;
    if (ioserver_claim(self) || tw->self_claimed) {
        tw->self_claimed = 0;
        Py_RETURN_TRUE;
    }
    /* A waker claimed: its unpark follows without blocking (a Python waker
     * may be a few bytecodes away from it). */
    while (!tw->unparked) {
        Py_BEGIN_ALLOW_THREADS
        sched_yield();
        Py_END_ALLOW_THREADS
    }
    ioserver_tw_consume(self);
    Py_RETURN_FALSE;
}

static PyObject *
tw_get_unparked(ioserver_ThreadWakeup *self, void *closure)
{
    return PyBool_FromLong(self->unparked);
}

static PyMethodDef tw_methods[] = {
    {"unpark", tw_unpark_meth, METH_NOARGS,
     "Make the sleeper runnable. Only the winner of claim() calls this."},
    {"park", (PyCFunction)(void (*)(void))tw_park, METH_FASTCALL,
     "park(timeout=None): block until woken (True) or timeout passes (False).\n\n"
     "An exception a signal handler raises while parked propagates; the caller then\n"
     "ends the block with abort(), never with another park."},
    {"abort", tw_abort, METH_NOARGS,
     "End a block that is over without a wakeup: True if that worked; False if a\n"
     "waker had claimed the handle first (its payload is set when this returns)."},
    {NULL},
};

static PyGetSetDef tw_getset[] = {
    {"_unparked", (getter)tw_get_unparked, NULL, "Whether the waker's unpark happened.", NULL},
    {NULL},
};

static PyType_Slot tw_slots[] = {
    {Py_tp_doc, "A handle for a blocked native thread (made by the thread that parks on it)."},
    {Py_tp_new, tw_new},
    {Py_tp_dealloc, tw_dealloc},
    {Py_tp_traverse, handle_traverse},
    {Py_tp_clear, handle_clear},
    {Py_tp_methods, tw_methods},
    {Py_tp_getset, tw_getset},
    {0, NULL},
};

static PyType_Spec tw_spec = {
    .name = "ioserver._native.ThreadWakeup",
    .basicsize = sizeof(ioserver_ThreadWakeup),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = tw_slots,
};

/* ---- module functions ------------------------------------------------------ */

/* ---- green tasks ----------------------------------------------------------- */

/* Live using_task() scopes (sched/_current.py keeps the count here through _green_scope). */
static Py_ssize_t green_scopes = 0;
/* This thread's blocking calls go through Python (an I/O thread, which refuses them). */
static _Thread_local char thread_green = 0;
static PyObject *str_gevent = NULL;

int
ioserver_green_possible(void)
{
    if (thread_green || green_scopes > 0) {
        return 1;
    }
    PyObject *modules = PyImport_GetModuleDict();  /* borrowed */
    return PyDict_Check(modules) && PyDict_Contains(modules, str_gevent) == 1;
}

/* sniffio's state, read by ioserver_async_foreign: the module last seen in
 * sys.modules, its thread_local and its current_async_library_cvar (owned;
 * refreshed when sys.modules holds another module object). */
static PyObject *str_sniffio, *str_thread_local, *str_name, *str_cvar, *str_trio;
static PyObject *sniffio_mod = NULL, *sniffio_local = NULL, *sniffio_cvar = NULL;

/* 1 if `name` (borrowed, may be NULL) is the string "trio". */
static inline int
is_trio(PyObject *name)
{
    return name != NULL &&
           (name == str_trio ||
            (PyUnicode_CheckExact(name) && PyUnicode_Compare(name, str_trio) == 0));
}

int
ioserver_async_foreign(void)
{
    if (green_scopes > 0) {
        return 1;  /* a using_task() scope may name the task: Python decides */
    }
    /* sniffio alone (aiologic and others import it) cannot name trio: only
     * once trio itself is imported is its state worth reading. */
    PyObject *modules = PyImport_GetModuleDict();  /* borrowed */
    if (!PyDict_Check(modules) || PyDict_GetItemWithError(modules, str_trio) == NULL) {
        PyErr_Clear();
        return 0;
    }
    PyObject *mod = PyDict_GetItemWithError(modules, str_sniffio);
    if (mod == NULL) {
        PyErr_Clear();
        return 0;
    }
    if (mod != sniffio_mod) {
        PyObject *local = PyObject_GetAttr(mod, str_thread_local);
        PyObject *cvar = local == NULL ? NULL : PyObject_GetAttr(mod, str_cvar);
        if (cvar == NULL || !PyContextVar_CheckExact(cvar)) {
            Py_XDECREF(local);
            Py_XDECREF(cvar);
            PyErr_Clear();
            return 0;
        }
        Py_XSETREF(sniffio_mod, Py_NewRef(mod));
        Py_XSETREF(sniffio_local, local);
        Py_XSETREF(sniffio_cvar, cvar);
    }
    PyObject *name = PyObject_GetAttr(sniffio_local, str_name);
    if (name == NULL) {
        PyErr_Clear();
        return 0;
    }
    int truth = name == Py_None ? 0 : PyObject_IsTrue(name);
    if (truth < 0) {
        PyErr_Clear();
        truth = 0;
    }
    if (!truth) {  /* as sched/_current.py: the thread-local name, else the context variable */
        Py_DECREF(name);
        if (PyContextVar_Get(sniffio_cvar, NULL, &name) < 0) {
            PyErr_Clear();
            return 0;
        }
    }
    int r = is_trio(name) ? 2 : 0;
    Py_XDECREF(name);
    return r;
}

static PyObject *
green_scope(PyObject *module, PyObject *arg)
{
    Py_ssize_t delta = PyLong_AsSsize_t(arg);
    if (delta == -1 && PyErr_Occurred()) {
        return NULL;
    }
    green_scopes += delta;
    Py_RETURN_NONE;
}

static PyObject *
thread_scope(PyObject *module, PyObject *arg)
{
    int on = PyObject_IsTrue(arg);
    if (on < 0) {
        return NULL;
    }
    thread_green = (char)on;
    Py_RETURN_NONE;
}

static PyObject *
set_main_thread(PyObject *module, PyObject *arg)
{
    unsigned long ident = PyLong_AsUnsignedLong(arg);
    if (ident == (unsigned long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    main_ident = ident;
    Py_RETURN_NONE;
}

static PyObject *
after_fork_child(PyObject *module, PyObject *unused)
{
    /* Parked entries of the parent's other threads are dead here: channels
     * drop them the next time they look at their queues. */
    ioserver_fork_gen++;
    main_ident = PyThread_get_thread_ident();
    /* Releases queued for the parent's threads: nobody here waits for them. */
    defer_ident = 0;
    for (Py_ssize_t i = 0; i < ndeferred; i++) {
        Py_DECREF(deferred[i]);
    }
    ndeferred = 0;
    Py_RETURN_NONE;
}

static PyMethodDef sched_functions[] = {
    {"_green_scope", green_scope, METH_O,
     "Add (+1/-1) to the count of live using_task() scopes (sched/_current.py)."},
    {"_thread_scope", thread_scope, METH_O,
     "Whether this thread's blocking calls ask Python first (an I/O thread: sched.py)."},
    {"_set_main_thread", set_main_thread, METH_O,
     "Record the ident of the thread where signal handlers run."},
    {"_after_fork_child", after_fork_child, METH_NOARGS,
     "In a forked child: forget the parent's parked threads."},
    {"_flush_unparks", flush_unparks, METH_NOARGS,
     "Release the unparks the I/O thread deferred to the end of its batch."},
    {NULL},
};

int
ioserver_init_sched(PyObject *module)
{
    if (PyThread_tss_create(&park_key) != 0) {
        PyErr_SetString(PyExc_RuntimeError, "cannot create a thread-specific key");
        return -1;
    }
    main_ident = PyThread_get_thread_ident();
    park_dict_key = PyUnicode_InternFromString("ioserver._native.parklock");
    str_park = PyUnicode_InternFromString("park");
    str_unpark = PyUnicode_InternFromString("unpark");
    str_gevent = PyUnicode_InternFromString("gevent");
    if (str_gevent == NULL) {
        return -1;
    }
    str_sniffio = PyUnicode_InternFromString("sniffio");
    str_thread_local = PyUnicode_InternFromString("thread_local");
    str_name = PyUnicode_InternFromString("name");
    str_cvar = PyUnicode_InternFromString("current_async_library_cvar");
    str_trio = PyUnicode_InternFromString("trio");
    if (str_sniffio == NULL || str_thread_local == NULL || str_name == NULL ||
        str_cvar == NULL || str_trio == NULL) {
        return -1;
    }
    if (park_dict_key == NULL || str_park == NULL || str_unpark == NULL) {
        return -1;
    }
    ioserver_HandleType = (PyTypeObject *)PyType_FromModuleAndSpec(module, &handle_spec, NULL);
    if (ioserver_HandleType == NULL) {
        return -1;
    }
    ioserver_ThreadWakeupType = (PyTypeObject *)PyType_FromModuleAndSpec(
        module, &tw_spec, (PyObject *)ioserver_HandleType);
    if (ioserver_ThreadWakeupType == NULL) {
        return -1;
    }
    orig_park = PyDict_GetItemWithError(ioserver_ThreadWakeupType->tp_dict, str_park);
    orig_unpark = PyDict_GetItemWithError(ioserver_ThreadWakeupType->tp_dict, str_unpark);
    if (orig_park == NULL || orig_unpark == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_RuntimeError, "ThreadWakeup lacks park/unpark");
        }
        return -1;
    }
    Py_INCREF(orig_park);   /* owned for the process's life */
    Py_INCREF(orig_unpark);
    if (PyModule_AddObjectRef(module, "WakeupHandle", (PyObject *)ioserver_HandleType) < 0
        || PyModule_AddObjectRef(module, "ThreadWakeup", (PyObject *)ioserver_ThreadWakeupType) < 0
        || PyModule_AddFunctions(module, sched_functions) < 0) {
        return -1;
    }
    str_call_soon = PyUnicode_InternFromString("call_soon");
    flush_fn = PyObject_GetAttrString(module, "_flush_unparks");
    if (str_call_soon == NULL || flush_fn == NULL) {
        return -1;
    }
    return 0;
}
