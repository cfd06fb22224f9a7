/* The native core of ioserver: shared declarations of its parts.
 *
 * One extension module, ioserver._native, built from the files in this folder;
 * each part (sched.c, channel.c, select.c, queue.c) registers its types from an
 * init function called by module.c. The pure-Python modules (sched/_handles.py,
 * channel.py, select.py, requests.py) are the reference: every type here keeps
 * their contract (docs/architecture.md). The GIL is the only mutex.
 */
#ifndef IOSERVER_NATIVE_H
#define IOSERVER_NATIVE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "pythread.h"

/* Whether a blocking call may come from a task that is not a native thread
 * (gevent is imported, or a using_task() scope is live): then the slow paths
 * ask Python (channel.py's _green_recv/_green_send, select.py) before parking
 * a thread. Cheap: one dict lookup. Never raises. */
int ioserver_green_possible(void);

/* Whether an await comes from a task that is not an asyncio task: 2 when
 * sniffio says "trio" (its thread-local name, else its context variable), 1
 * when a using_task() scope is live (Python decides), 0 for asyncio. Then
 * arecv/asend make trio's checkpoints (channel.c's Op) or run channel.py's
 * _arecv_foreign/_asend_foreign instead of the asyncio fast path. Cheap: one
 * dict lookup until trio is imported, then two more, an attribute read and a
 * context-variable read. Never raises (an error reading sniffio's state counts as asyncio). */
int ioserver_async_foreign(void);

/* Each part's init: add its types and functions to the module; 0 or -1. */
int ioserver_init_sched(PyObject *module);
int ioserver_init_channel(PyObject *module);
int ioserver_init_select(PyObject *module);
int ioserver_init_queue(PyObject *module);
int ioserver_init_messages(PyObject *module);
int ioserver_init_deliver(PyObject *module);
int ioserver_init_port(PyObject *module);
int ioserver_init_write(PyObject *module);
int ioserver_init_budget(PyObject *module);
/* The request queue (csrc/queue.c): whether o is one; submit argv[0](*argv[1:])
 * (0, or -1 with an exception: ServerStopped once closed). `more_coming`: the
 * caller goes on submitting before it blocks, so a pipe byte it writes keeps
 * the GIL (the loop then drains the whole batch when the caller lets go). */
int ioserver_is_request_queue(PyObject *o);
int ioserver_queue_submit(PyObject *queue, PyObject *const *argv, Py_ssize_t nargs,
                          int more_coming);
/* ---- object slots of the Python classes, at their member offsets -----------
 * (csrc/messages.c) The offset of cls's object slot `name`, or -1 with an
 * exception; ioserver_slot_offsets resolves `count` names into out: 0 or -1. */
Py_ssize_t ioserver_slot_offset(PyTypeObject *cls, PyObject *name);
int ioserver_slot_offsets(PyTypeObject *cls, const char *const *names, Py_ssize_t *out,
                          int count);

#define IOSERVER_SLOT(obj, off) (*(PyObject **)((char *)(obj) + (off)))

/* Replace the object in a slot (steals value; the old one may be NULL). */
static inline void
ioserver_slot_set(PyObject *obj, Py_ssize_t off, PyObject *value)
{
    PyObject *old = IOSERVER_SLOT(obj, off);
    IOSERVER_SLOT(obj, off) = value;
    Py_XDECREF(old);
}

/* A slot's value (borrowed), or NULL with AttributeError when unset. */
static inline PyObject *
ioserver_slot_get(PyObject *obj, Py_ssize_t off, const char *name)
{
    PyObject *v = IOSERVER_SLOT(obj, off);
    if (v == NULL) {
        PyErr_Format(PyExc_AttributeError, "'%s' object has no attribute '%s'",
                     Py_TYPE(obj)->tp_name, name);
    }
    return v;
}

/* slot += n for an int slot (a counter): 0, or -1 with an exception. */
int ioserver_slot_add(PyObject *obj, Py_ssize_t off, const char *name, Py_ssize_t n);

/* ---- sched.c: wakeup handles ------------------------------------------------
 *
 * A WakeupHandle is claimed at most once (a test-and-set of `claimed` under the
 * GIL). A waker that wins the claim stores the outcome, then unparks. A channel
 * stores it as (index, value) without allocating: `has_index` says that the
 * Python-visible `payload` is the pair (index, value); otherwise `payload` is
 * `value` itself.
 */
typedef struct {
    PyObject_HEAD
    PyObject *value;      /* owned; never NULL (None when nothing was stored) */
    Py_ssize_t index;     /* meaningful when has_index */
    char claimed;         /* set once, by the claim's winner */
    char has_index;       /* payload is (index, value) */
} ioserver_Handle;

/* The park lock of one thread, shared by the ThreadWakeups that thread makes.
 * Held whenever its thread is not parked; a waker releases it once. Owned by
 * refcount (`refs`, touched only under the GIL): one for the thread (dropped
 * when the thread's state is cleared) and one per handle. */
typedef struct {
    PyThread_type_lock lock;
    Py_ssize_t refs;
    /* Releases taken by a wait on a handle that was not the one unparked (a
     * nested block of the same thread: a signal handler, a __del__ or a
     * callback that blocks between an outer block's registration and its
     * park). Each belongs to an unparked, unconsumed handle of the thread,
     * which takes it from here instead of from the lock. */
    Py_ssize_t banked;
    PyObject *cached;  /* owned: a ThreadWakeup the native core reuses (ioserver_tw_get) */
} ioserver_ParkLock;

typedef struct {
    ioserver_Handle base;
    ioserver_ParkLock *park;  /* owned (one ref) */
    char unparked;            /* the waker's release happened */
    char consumed;            /* the sleeper consumed that release */
    char self_claimed;        /* an interrupted park took its own claim */
    char selfstore;           /* a main-thread sender: never store its message for it */
} ioserver_ThreadWakeup;

/* The types (heap types, owned by the module; set by ioserver_init_sched). */
extern PyTypeObject *ioserver_HandleType;
extern PyTypeObject *ioserver_ThreadWakeupType;

/* Claim under the GIL: 1 if this call won. No Python code runs. */
static inline int
ioserver_claim(PyObject *h)
{
    ioserver_Handle *hd = (ioserver_Handle *)h;
    if (hd->claimed) {
        return 0;
    }
    hd->claimed = 1;
    return 1;
}

/* Store (index, value) as the payload of a handle whose claim the caller won.
 * Steals the reference to `value`. The old value is None (a handle is claimed
 * once, and nothing stores before the claim), so no arbitrary decref runs. */
static inline void
ioserver_set_payload(PyObject *h, Py_ssize_t index, PyObject *value)
{
    ioserver_Handle *hd = (ioserver_Handle *)h;
    PyObject *old = hd->value;
    hd->value = value;
    hd->index = index;
    hd->has_index = 1;
    Py_DECREF(old);
}

/* 1 if `h` is a ThreadWakeup whose unpark can run inside a step (the exact
 * native type, its park/unpark not replaced at run time). No Python code runs. */
int ioserver_native_unpark_ok(PyObject *h);
/* Release the park lock of a native ThreadWakeup (inside a step; no Python code);
 * on a thread deferring its unparks, queue the release instead. */
void ioserver_tw_unpark(PyObject *h);
/* The calling thread (an I/O thread in a read callback) defers its native
 * unparks until `loop` runs the flush this schedules (sched.c): 0, or -1 with
 * an exception (nothing deferred). Not inside a step: it calls Python. */
int ioserver_defer_unparks(PyObject *loop);
/* Whether the calling thread's unparks are being deferred. */
int ioserver_deferring_unparks(void);
/* Whether the calling thread is the one where signal handlers run. */
int ioserver_is_main_thread(void);
/* A new ThreadWakeup for the calling thread, or NULL with an exception. */
PyObject *ioserver_tw_new(int selfstore);
/* A ThreadWakeup for a park of the native core itself (a new reference): the
 * calling thread's cached one when nothing else refers to it any more (so no
 * queue holds it and no waker can reach it), reset; else a new one, cached.
 * It never escapes to Python code, so its reuse is invisible; it spares each
 * park a GC allocation (which counts towards the collector's thresholds). */
PyObject *ioserver_tw_get(int selfstore);
/* Done with a handle from ioserver_tw_get (its payload copied out): drop its
 * payload, so the cached handle keeps no message alive, and the reference. */
void ioserver_tw_put(PyObject *h);
/* How a native park ended. */
enum { IOSERVER_PARK_WOKEN = 0, IOSERVER_PARK_TIMEOUT = 1, IOSERVER_PARK_INTR = 2 };
/* Wait on a native ThreadWakeup up to `us` microseconds (-1: no limit), the
 * GIL released around the acquire only. WOKEN: a waker's release was consumed.
 * TIMEOUT: the time passed and our own claim was taken. INTR: a signal
 * interrupted the wait; nothing was consumed and nothing was claimed. */
int ioserver_tw_wait(PyObject *h, long long us);
/* After losing the claim to a waker: wait for its release and consume it. */
void ioserver_tw_consume(PyObject *h);
/* The fork generation: bumped in a forked child, where parked entries of the
 * parent's other threads are dead. */
extern unsigned long ioserver_fork_gen;

/* ---- channel.c, for select.c ----------------------------------------------- */

/* Whether o is a native channel (any subclass: 1) whose synchronous operations
 * are the native ones (the exact NativeChannel class: 2), or neither (0). */
int ioserver_channel_kind(PyObject *o);
/* The messages a native channel holds (no Python code runs), or -1 if o is not one. */
Py_ssize_t ioserver_channel_buffered(PyObject *o);
/* One non-blocking attempt on a native channel, in one step: receive (value
 * NULL; *out gets the message) or send value (borrowed). 1 done, 0 not ready,
 * -1 closed (and drained, for a receive), -2 error set. */
int ioserver_channel_poll(PyObject *ch, PyObject *value, PyObject **out);
/* The select protocol of a native channel, each call one step (then the work
 * after it): register h (a receive if value is NULL) unless the channel is
 * ready (1 registered, 0 ready, -1 error); drop h's entries; finish a send a
 * waker left `mark` for (1 done, 0 go round, -1 closed, -2 error); free the
 * slot of a received message; put a message back at the head (0, -1 error);
 * give back a SLOT or WANT. */
int ioserver_channel_register(PyObject *ch, PyObject *h, Py_ssize_t index, PyObject *value);
void ioserver_channel_unregister(PyObject *ch, PyObject *h);
int ioserver_channel_claimed_send(PyObject *ch, PyObject *value, PyObject *mark);
void ioserver_channel_release_slot(PyObject *ch);
int ioserver_channel_unrecv(PyObject *ch, PyObject *value);
void ioserver_channel_abandon(PyObject *ch, PyObject *mark);
/* The marks (borrowed; set by channel.py's _setup). */
PyObject *ioserver_mark(int which);
enum { IOSERVER_RETRY, IOSERVER_SENT, IOSERVER_CLOSED };

/* The exception in flight, set aside while other calls run and put back after
 * (PyErr_Fetch/PyErr_Restore are deprecated from 3.12: -Werror must build there). */
typedef struct {
#if PY_VERSION_HEX >= 0x030C0000
    PyObject *exc;
#else
    PyObject *type, *value, *tb;
#endif
} ioserver_SavedError;

static inline void
ioserver_err_save(ioserver_SavedError *saved)
{
#if PY_VERSION_HEX >= 0x030C0000
    saved->exc = PyErr_GetRaisedException();
#else
    PyErr_Fetch(&saved->type, &saved->value, &saved->tb);
#endif
}

static inline void
ioserver_err_restore(ioserver_SavedError *saved)
{
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(saved->exc);
#else
    PyErr_Restore(saved->type, saved->value, saved->tb);
#endif
}

/* Take the exception in flight as one normalized object (owned, its traceback
 * attached), to hand to Python code such as a driver's fail(exc). */
static inline PyObject *
ioserver_err_take(void)
{
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *type, *exc, *tb;
    PyErr_Fetch(&type, &exc, &tb);
    PyErr_NormalizeException(&type, &exc, &tb);
    if (tb != NULL && exc != NULL) {
        PyException_SetTraceback(exc, tb);
    }
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return exc;
#endif
}

#endif
