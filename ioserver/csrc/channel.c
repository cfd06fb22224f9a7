/* The native channel part: _native.Channel (see channel.py, the reference).
 *
 * One type for the three flavours, chosen by the capacity given to __init__:
 * None unbounded, N > 0 bounded, 0 rendezvous. channel.py subclasses it (adding
 * Generic subscripting and the async operations, written over the select
 * protocol), and the daemon's SessionSink subclasses that.
 *
 * The GIL is the only mutex. Every operation is a sequence of *steps*; a step
 * runs from start to end without executing Python code and without releasing
 * the GIL, so it is atomic for every other thread: "append, then look for a
 * parked receiver" and "re-check, then register" are each one step, which is
 * what closes the lost-wakeup races the pure-Python core needs premises for.
 * Inside a step nothing may run Python code: no call, no allocation of a
 * GC-tracked object (in 3.11 it may start a collection, which runs
 * finalizers), and no Py_DECREF of an object that might be freed (its
 * finalizer could run anything and release the GIL). A step therefore records
 * in a `Post` what must happen after it: references to drop, non-native
 * handles whose unpark() must be called, room watchers to call. Native
 * ThreadWakeups are claimed, given their payload and unparked inside the step.
 *
 * State: `ring` holds the buffered messages (owned references), allocated on
 * the first append. `recvq` and `sendq` hold parked parties in arrival order:
 * (handle, index) and (handle, index, value), each reference owned by the
 * entry. An entry's handle may be claimed elsewhere (a select that ended):
 * such entries are skipped and dropped when met. A waker that claims an entry
 * removes it, gives the handle its payload (index, value) and unparks it.
 *
 * Bounded: `room` counts free slots. A sender takes one before it appends; a
 * receiver that took a message from the buffer gives one back, and a receiver
 * woken with a buffered message gives it back after it resumes (so that an
 * interrupted or cancelled one can put the message back into the slot it
 * still holds). A parked sender is admitted when a slot frees: a thread other
 * than the main one has its message stored for it (SENT: parked senders keep
 * their order); a coroutine, a select or the main thread is handed the slot
 * (SLOT) and stores its message itself, so a cancelled or interrupted one
 * stored nothing.
 *
 * Rendezvous: no buffer (the ring only holds put-backs). A sender hands its
 * message to the first parked receiver; a receiver takes the message of a
 * parked thread sender (SENT), or asks a parked coroutine/main-thread sender
 * to come and hand it over (WANT).
 *
 * Interrupts (main thread): a park that a signal interrupts takes its own
 * claim if it can, withdraws its entry and runs the handlers: one that raises
 * ends the call (nothing happened), one that returns lets the call go on. If
 * a waker won the claim, the call completed: the release is consumed and the
 * handlers run; if one raises, the wakeup is undone (a message goes back to
 * the head, a slot or a WANT is given back) and the call raises. A main-thread
 * sender's message is never stored by a waker, so an interrupted send stored
 * nothing.
 */
#include "native.h"

#include <sched.h>
#include <structmember.h>

enum { UNBOUNDED = 0, BOUNDED = 1, RENDEZVOUS = 2 };

typedef struct {
    PyObject *handle;  /* owned */
    PyObject *value;   /* owned; NULL for a receiver */
    Py_ssize_t index;
} Entry;

typedef struct {
    Entry *items;      /* PyMem; NULL until the first party parks */
    Py_ssize_t head, len, cap;
} WaitQ;

typedef struct {
    PyObject_HEAD
    PyObject **ring;   /* PyMem; owned references to the buffered messages */
    Py_ssize_t rhead, rlen, rcap;
    Py_ssize_t capacity;  /* -1: unbounded */
    Py_ssize_t room;      /* bounded: free slots */
    WaitQ recvq, sendq;
    PyObject *watchers;   /* owned list of room callbacks, or NULL */
    PyObject *anchor;     /* owned, or NULL (None) */
    PyObject *weakreflist;
    unsigned long gen;    /* ioserver_fork_gen when the queues were last checked */
    char kind;
    char closed;
    char fed_by_loop;
} Channel;

/* Set by _setup() from channel.py (owned for the process's life). */
static PyObject *ChannelClosed, *EmptyExc, *FullExc, *StatisticsCls, *ExactCls;
static PyObject *RETRY, *SLOT, *WANT, *SENT, *CLOSED, *NOTHING;
static PyObject *ArecvSlow, *AsendSlow;  /* channel.py's coroutine functions */
static PyObject *GreenRecv, *GreenSend;  /* channel.py's _green_recv/_green_send, or NULL */
/* channel.py's _arecv_foreign/_asend_foreign (an await of a trio task), or NULL */
static PyObject *ArecvForeign, *AsendForeign;
/* trio.lowlevel's checkpoint_if_cancelled and cancel_shielded_checkpoint, given by
 * sched/trio.py when it is imported (_setup_trio), or NULL */
static PyObject *CheckpointIfCancelled, *CancelShieldedCheckpoint;
/* sched/trio.py's TrioTask (_setup_trio); channel.py's _arecv_trio_park and
 * _asend_trio_park (_setup_green), where a trio op that is not ready goes. */
static PyObject *TrioTaskObj, *ArecvTrioPark, *AsendTrioPark;
static PyTypeObject *OpType;
static PyTypeObject *ChannelType;
static PyObject *str_unpark, *str_try_send, *str_park;

/* ---- after-step work ----------------------------------------------------------- */

typedef struct {
    PyObject **items;
    Py_ssize_t n, cap;
    PyObject *small[8];
} ObjList;

typedef struct {
    ObjList trash;   /* references to drop */
    ObjList wake;    /* handles (owned) whose unpark() must be called */
    PyObject *watchers;  /* a list of callbacks to call (owned), or NULL */
    PyObject *ch;    /* borrowed: the channel of the last step (step_begin), or NULL */
} Post;

static void refused(PyObject *ch, PyObject *h);

static void
objlist_init(ObjList *l)
{
    l->items = l->small;
    l->n = 0;
    l->cap = 8;
}

/* Steals `o`. Inside a step: grows with PyMem only; on failure the reference
 * is leaked rather than dropped inside the step. */
static void
objlist_add(ObjList *l, PyObject *o)
{
    if (l->n == l->cap) {
        Py_ssize_t cap = l->cap * 2;
        PyObject **items;
        if (l->items == l->small) {
            items = PyMem_Malloc(cap * sizeof(PyObject *));
            if (items != NULL) {
                memcpy(items, l->small, sizeof(l->small));
            }
        }
        else {
            items = PyMem_Realloc(l->items, cap * sizeof(PyObject *));
        }
        if (items == NULL) {
            return;  /* leak o: out of memory inside a step */
        }
        l->items = items;
        l->cap = cap;
    }
    l->items[l->n++] = o;
}

static void
post_init(Post *p)
{
    objlist_init(&p->trash);
    objlist_init(&p->wake);
    p->watchers = NULL;
    p->ch = NULL;
}

static inline void
post_trash(Post *p, PyObject *o)
{
    if (o != NULL) {
        objlist_add(&p->trash, o);
    }
}

/* After the step: unpark the non-native handles, call the room watchers, then
 * drop the references. Keeps any exception already set. */
static void
post_run(Post *p)
{
    if (p->wake.n == 0 && p->trash.n == 0 && p->watchers == NULL) {
        return;
    }
    ioserver_SavedError saved;
    ioserver_err_save(&saved);
    int interrupted = 0;
    for (Py_ssize_t i = 0; i < p->wake.n; i++) {
        /* The handle is claimed and holds its payload: its unpark must run,
         * or the sleeper never wakes (and its message is lost). A Python
         * unpark can be cut by a signal handler (main thread): run it again
         * (unpark is idempotent for the sleeper) and re-arm the Ctrl-C, which
         * is then raised right after this call returns. */
        for (int tries = 0;; tries++) {
            PyObject *r = PyObject_CallMethodNoArgs(p->wake.items[i], str_unpark);
            if (r != NULL) {
                Py_DECREF(r);
                if (r == Py_False && p->ch != NULL) {
                    /* The sleeper's scheduler is gone: keep what it was handed. */
                    refused(p->ch, p->wake.items[i]);
                }
                break;
            }
            if (tries < 8 && PyErr_ExceptionMatches(PyExc_KeyboardInterrupt)) {
                PyErr_Clear();
                interrupted = 1;
                continue;
            }
            PyErr_WriteUnraisable(p->wake.items[i]);
            break;
        }
        Py_DECREF(p->wake.items[i]);
    }
    if (p->watchers != NULL) {
        Py_ssize_t n = PyList_GET_SIZE(p->watchers);
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *r = PyObject_CallNoArgs(PyList_GET_ITEM(p->watchers, i));
            if (r == NULL) {
                PyErr_WriteUnraisable(PyList_GET_ITEM(p->watchers, i));
            }
            Py_XDECREF(r);
        }
        Py_CLEAR(p->watchers);
    }
    for (Py_ssize_t i = 0; i < p->trash.n; i++) {
        Py_DECREF(p->trash.items[i]);
    }
    if (p->wake.items != p->wake.small) {
        PyMem_Free(p->wake.items);
    }
    if (p->trash.items != p->trash.small) {
        PyMem_Free(p->trash.items);
    }
    objlist_init(&p->wake);
    objlist_init(&p->trash);
    ioserver_err_restore(&saved);
    if (interrupted) {
        PyErr_SetInterrupt();
    }
}

/* ---- the ring buffer -------------------------------------------------------------- */

static int
ring_grow(Channel *ch)
{
    Py_ssize_t cap = ch->rcap ? ch->rcap * 2 : 8;
    if (ch->capacity > 0 && cap > ch->capacity && ch->rcap < ch->capacity) {
        cap = ch->capacity < 8 ? 8 : ch->capacity;  /* a bounded ring never outgrows it much */
        if (cap <= ch->rcap) {
            cap = ch->rcap * 2;
        }
    }
    PyObject **ring = PyMem_Malloc(cap * sizeof(PyObject *));
    if (ring == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < ch->rlen; i++) {
        ring[i] = ch->ring[(ch->rhead + i) % ch->rcap];
    }
    PyMem_Free(ch->ring);
    ch->ring = ring;
    ch->rhead = 0;
    ch->rcap = cap;
    return 0;
}

/* Append (steals o on success). */
static int
ring_push(Channel *ch, PyObject *o)
{
    if (ch->rlen == ch->rcap && ring_grow(ch) < 0) {
        return -1;
    }
    Py_ssize_t i = ch->rhead + ch->rlen;
    if (i >= ch->rcap) {
        i -= ch->rcap;
    }
    ch->ring[i] = o;
    ch->rlen++;
    return 0;
}

/* Prepend (steals o on success). */
static int
ring_push_front(Channel *ch, PyObject *o)
{
    if (ch->rlen == ch->rcap && ring_grow(ch) < 0) {
        return -1;
    }
    ch->rhead = ch->rhead == 0 ? ch->rcap - 1 : ch->rhead - 1;
    ch->ring[ch->rhead] = o;
    ch->rlen++;
    return 0;
}

/* Pop the head (a new reference moved to the caller); rlen > 0. */
static inline PyObject *
ring_pop(Channel *ch)
{
    PyObject *o = ch->ring[ch->rhead];
    if (++ch->rhead == ch->rcap) {
        ch->rhead = 0;
    }
    ch->rlen--;
    return o;
}

static inline PyObject *
ring_at(Channel *ch, Py_ssize_t i)
{
    Py_ssize_t j = ch->rhead + i;
    return ch->ring[j >= ch->rcap ? j - ch->rcap : j];
}

/* ---- the queues of parked parties ------------------------------------------------- */

static int
waitq_push(WaitQ *q, PyObject *handle, Py_ssize_t index, PyObject *value)
{
    if (q->len == q->cap) {
        Py_ssize_t cap = q->cap ? q->cap * 2 : 4;
        Entry *items = PyMem_Malloc(cap * sizeof(Entry));
        if (items == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        for (Py_ssize_t i = 0; i < q->len; i++) {
            items[i] = q->items[(q->head + i) % q->cap];
        }
        PyMem_Free(q->items);
        q->items = items;
        q->head = 0;
        q->cap = cap;
    }
    Entry *e = &q->items[(q->head + q->len) % q->cap];
    e->handle = Py_NewRef(handle);
    e->value = Py_XNewRef(value);
    e->index = index;
    q->len++;
    return 0;
}

static inline Entry *
waitq_front(WaitQ *q)
{
    return &q->items[q->head];
}

static inline Entry *
waitq_at(WaitQ *q, Py_ssize_t i)
{
    return &q->items[(q->head + i) % q->cap];
}

/* Pop the front entry (its references move to the caller); len > 0. */
static inline Entry
waitq_pop(WaitQ *q)
{
    Entry e = q->items[q->head];
    q->head = (q->head + 1) % q->cap;
    q->len--;
    return e;
}

/* Remove the entry at position i (its references move to the caller). */
static Entry
waitq_remove_at(WaitQ *q, Py_ssize_t i)
{
    Entry e = *waitq_at(q, i);
    for (Py_ssize_t k = i; k + 1 < q->len; k++) {
        *waitq_at(q, k) = *waitq_at(q, k + 1);
    }
    q->len--;
    return e;
}

static inline void
entry_trash(Post *p, Entry e)
{
    post_trash(p, e.handle);
    post_trash(p, e.value);
}

/* ---- handles ------------------------------------------------------------------- */

/* Whether a waker may store a parked sender's message for it: a thread other
 * than the main one (which cannot be interrupted) on a native handle. */
static inline int
storable(PyObject *h)
{
    return Py_IS_TYPE(h, ioserver_ThreadWakeupType)
           && !((ioserver_ThreadWakeup *)h)->selfstore;
}

static inline int
is_claimed(PyObject *h)
{
    return ((ioserver_Handle *)h)->claimed;
}

/* Give a handle whose claim the caller won its payload (steals value) and
 * unpark it: now if native, after the step otherwise. */
static void
hand(Post *p, PyObject *h, Py_ssize_t index, PyObject *value)
{
    ioserver_set_payload(h, index, value);
    if (ioserver_native_unpark_ok(h)) {
        ioserver_tw_unpark(h);
    }
    else {
        objlist_add(&p->wake, Py_NewRef(h));
    }
}

/* ---- lock-free steps (GIL held; no Python code) ---------------------------------- */

/* A forked child: the parent's parked parties are dead; drop their entries. */
static inline void
step_begin(Channel *ch, Post *p)
{
    p->ch = (PyObject *)ch;
    if (ch->gen != ioserver_fork_gen) {
        while (ch->recvq.len) {
            entry_trash(p, waitq_pop(&ch->recvq));
        }
        while (ch->sendq.len) {
            entry_trash(p, waitq_pop(&ch->sendq));
        }
        if (ch->kind == BOUNDED) {
            /* Slots that woken parties of the parent's other threads held (a
             * receiver handed a message, a sender handed SLOT) died with them. */
            ch->room = ch->capacity > ch->rlen ? ch->capacity - ch->rlen : 0;
        }
        ch->gen = ioserver_fork_gen;
    }
}

/* Hand buffered messages to parked receivers. */
static void
feed(Channel *ch, Post *p)
{
    while (ch->recvq.len && ch->rlen) {
        Entry e = waitq_pop(&ch->recvq);
        if (ioserver_claim(e.handle)) {
            hand(p, e.handle, e.index, ring_pop(ch));
        }
        post_trash(p, e.handle);
    }
}

/* Give free slots to parked senders in arrival order; call the room watchers
 * (after the step) once the buffer is down to half the capacity. */
static void
admit(Channel *ch, Post *p)
{
    int stored = 0;
    while (ch->sendq.len && ch->room > 0) {
        ch->room--;
        int given = 0;
        while (ch->sendq.len) {
            Entry e = waitq_pop(&ch->sendq);
            if (ioserver_claim(e.handle)) {
                if (storable(e.handle) && ring_push(ch, e.value) == 0) {
                    e.value = NULL;  /* moved into the ring */
                    hand(p, e.handle, e.index, Py_NewRef(SENT));
                    stored = 1;
                }
                else {
                    if (storable(e.handle)) {
                        PyErr_Clear();  /* out of memory: it stores the message itself */
                    }
                    hand(p, e.handle, e.index, Py_NewRef(SLOT));
                }
                entry_trash(p, e);
                given = 1;
                break;
            }
            entry_trash(p, e);
        }
        if (!given) {
            ch->room++;  /* every parked entry was stale */
        }
    }
    if (stored) {
        feed(ch, p);
    }
    if (ch->watchers != NULL && ch->rlen <= ch->capacity / 2) {
        p->watchers = ch->watchers;  /* moved */
        ch->watchers = NULL;
    }
}

/* Rendezvous: give value (borrowed) to the first parked receiver still waiting. */
static int
hand_to_receiver(Channel *ch, PyObject *value, Post *p)
{
    while (ch->recvq.len) {
        Entry e = waitq_pop(&ch->recvq);
        int won = ioserver_claim(e.handle);
        if (won) {
            hand(p, e.handle, e.index, Py_NewRef(value));
        }
        post_trash(p, e.handle);
        if (won) {
            return 1;
        }
    }
    return 0;
}

/* Rendezvous: 0 no live parked sender other than own, 1 the first is a thread
 * whose message a receiver may take, 2 it must hand it over itself. */
static int
head_sender(Channel *ch, PyObject *own, Post *p)
{
    WaitQ *q = &ch->sendq;
    while (q->len) {
        PyObject *h = waitq_front(q)->handle;
        if (!is_claimed(h)) {
            if (h != own) {
                return storable(h) ? 1 : 2;
            }
            for (Py_ssize_t i = 0; i < q->len; i++) {  /* rare: a select meeting itself */
                PyObject *o = waitq_at(q, i)->handle;
                if (o != own && !is_claimed(o)) {
                    return storable(o) ? 1 : 2;
                }
            }
            return 0;
        }
        entry_trash(p, waitq_pop(q));
    }
    return 0;
}

/* Rendezvous: take the message of the first parked sender if it is storable;
 * NULL if there is none (a coroutine or the main thread hands it over itself). */
static PyObject *
take_from_sender(Channel *ch, Post *p)
{
    WaitQ *q = &ch->sendq;
    while (q->len) {
        PyObject *h = waitq_front(q)->handle;
        if (!storable(h)) {
            if (!is_claimed(h)) {
                return NULL;
            }
            entry_trash(p, waitq_pop(q));  /* stale */
            continue;
        }
        Entry e = waitq_pop(q);
        if (ioserver_claim(e.handle)) {
            hand(p, e.handle, e.index, Py_NewRef(SENT));
            post_trash(p, e.handle);
            return e.value;  /* moved to the caller */
        }
        entry_trash(p, e);
    }
    return NULL;
}

/* Rendezvous: wake the first parked sender other than own with WANT. */
static void
ask_a_sender(Channel *ch, PyObject *own, Post *p)
{
    WaitQ *q = &ch->sendq;
    for (Py_ssize_t i = 0; i < q->len;) {
        Entry *e = waitq_at(q, i);
        if (e->handle == own) {
            i++;
            continue;
        }
        if (ioserver_claim(e->handle)) {
            Entry taken = waitq_remove_at(q, i);
            hand(p, taken.handle, taken.index, Py_NewRef(WANT));
            entry_trash(p, taken);
            return;
        }
        entry_trash(p, waitq_remove_at(q, i));  /* stale */
    }
}

/* Take one message: 1 (*out owned), 0 none, -1 closed and drained. */
static int
try_recv_step(Channel *ch, Post *p, PyObject **out)
{
    if (ch->rlen) {
        *out = ring_pop(ch);
        if (ch->kind == BOUNDED) {
            ch->room++;
            if (ch->sendq.len || ch->watchers != NULL) {
                admit(ch, p);
            }
        }
        return 1;
    }
    if (ch->kind == RENDEZVOUS && ch->sendq.len) {
        PyObject *v = take_from_sender(ch, p);
        if (v != NULL) {
            *out = v;
            return 1;
        }
    }
    return ch->closed ? -1 : 0;
}

/* Send value (borrowed): 1 sent, 0 no room, -1 closed, -2 error (memory). */
static int
try_send_step(Channel *ch, PyObject *value, Post *p)
{
    if (ch->closed) {
        return -1;
    }
    if (ch->kind == RENDEZVOUS) {
        return hand_to_receiver(ch, value, p);
    }
    if (ch->kind == BOUNDED) {
        if (ch->room == 0) {
            return 0;
        }
        ch->room--;
    }
    if (ch->recvq.len && ch->rlen == 0) {
        /* Straight to a parked receiver (what append-then-feed would do). */
        while (ch->recvq.len) {
            Entry e = waitq_pop(&ch->recvq);
            int won = ioserver_claim(e.handle);
            if (won) {
                hand(p, e.handle, e.index, Py_NewRef(value));
            }
            post_trash(p, e.handle);
            if (won) {
                return 1;
            }
        }
    }
    if (ring_push(ch, Py_NewRef(value)) < 0) {
        Py_DECREF(value);  /* not the last reference: the caller holds one */
        if (ch->kind == BOUNDED) {
            ch->room++;
        }
        return -2;
    }
    if (ch->recvq.len) {
        feed(ch, p);
    }
    return 1;
}

static void
release_slot(Channel *ch, Post *p)
{
    if (ch->kind == BOUNDED) {
        ch->room++;
        admit(ch, p);
    }
}

/* Put a message back at the head (steals value); -1 on memory error. */
static int
unrecv(Channel *ch, PyObject *value, Post *p)
{
    if (ring_push_front(ch, value) < 0) {
        return -1;
    }
    feed(ch, p);
    return 0;
}

static void
abandon(Channel *ch, PyObject *mark, Post *p)
{
    if (ch->kind == BOUNDED && mark == SLOT) {
        release_slot(ch, p);
    }
    else if (ch->kind == RENDEZVOUS && mark == WANT) {
        ask_a_sender(ch, NULL, p);
    }
}

/* After a step: the unpark of handle h, which ch handed a payload, returned
 * False (its asyncio loop closed, its trio run or gevent hub ended). The
 * channel takes back what it handed: a message goes back to the head (and on
 * to the next receiver), a slot or a "come and hand it over" to the next
 * sender. RETRY and CLOSED carried nothing; SENT is only ever handed to a
 * native thread, whose unpark never refuses. */
static void
refused(PyObject *chobj, PyObject *h)
{
    Channel *ch = (Channel *)chobj;
    PyObject *v = ((ioserver_Handle *)h)->value;
    if (v == RETRY || v == CLOSED || v == SENT) {
        return;
    }
    Post p;
    post_init(&p);
    step_begin(ch, &p);
    if (v == SLOT || v == WANT) {
        abandon(ch, v, &p);
    }
    else if (unrecv(ch, Py_NewRef(v), &p) < 0) {
        Py_DECREF(v);
        PyErr_WriteUnraisable(chobj);  /* out of memory: the message is lost */
    }
    post_run(&p);
}

static void
drop(Channel *ch, PyObject *h, Post *p)
{
    WaitQ *qs[2] = {&ch->recvq, &ch->sendq};
    for (int k = 0; k < 2; k++) {
        WaitQ *q = qs[k];
        for (Py_ssize_t i = 0; i < q->len;) {
            if (waitq_at(q, i)->handle == h) {
                entry_trash(p, waitq_remove_at(q, i));
            }
            else {
                i++;
            }
        }
    }
}

static int
recv_ready(Channel *ch, PyObject *own, Post *p)
{
    return ch->rlen || ch->closed || (ch->kind == RENDEZVOUS && head_sender(ch, own, p) == 1);
}

static int
send_ready(Channel *ch, PyObject *own)
{
    if (ch->closed || ch->kind == UNBOUNDED) {
        return 1;
    }
    if (ch->kind == BOUNDED) {
        return ch->room > 0;
    }
    for (Py_ssize_t i = 0; i < ch->recvq.len; i++) {
        PyObject *h = waitq_at(&ch->recvq, i)->handle;
        if (h != own && !is_claimed(h)) {
            return 1;
        }
    }
    return 0;
}

/* A receiver (the last entry of recvq) just parked. */
static void
on_receiver_parked(Channel *ch, Post *p)
{
    if (ch->rlen) {
        feed(ch, p);
    }
    if (ch->kind != RENDEZVOUS || ch->recvq.len == 0) {
        return;
    }
    Entry *last = waitq_at(&ch->recvq, ch->recvq.len - 1);
    int head = head_sender(ch, last->handle, p);
    if (head == 2) {
        ask_a_sender(ch, last->handle, p);
    }
    else if (head == 1 && ioserver_claim(last->handle)) {
        hand(p, last->handle, last->index, Py_NewRef(RETRY));  /* go round again */
    }
}

/* ---- raising (after the step) --------------------------------------------------- */

static void
raise_closed(Channel *ch, PyObject *value)
{
    PyObject *exc = PyObject_CallFunctionObjArgs(
        ChannelClosed, (PyObject *)ch, value ? value : Py_None, NULL);
    if (exc != NULL) {
        PyErr_SetObject(ChannelClosed, exc);
        Py_DECREF(exc);
    }
}

static void
raise_full(PyObject *value)
{
    PyObject *exc = PyObject_CallOneArg(FullExc, value);
    if (exc != NULL) {
        PyErr_SetObject(FullExc, exc);
        Py_DECREF(exc);
    }
}

/* ---- parking (outside steps) ---------------------------------------------------- */

static long long
now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* timeout -> a deadline: -1 none, 0 poll, else monotonic microseconds; or,
 * below -1, "t microseconds from when it is first needed" as -(2 + t): a recv
 * or send that finds its message or room at once never reads the clock (a
 * port's inbox read with a timeout is the hot loop). resolve_deadline makes it
 * absolute before the first wait. */
static int
parse_deadline(PyObject *timeout, long long *deadline)
{
    if (timeout == NULL || timeout == Py_None) {
        *deadline = -1;
        return 0;
    }
    double t = PyFloat_AsDouble(timeout);
    if (t == -1.0 && PyErr_Occurred()) {
        return -1;
    }
    if (t != t) {
        PyErr_SetString(PyExc_ValueError, "timeout is NaN");
        return -1;
    }
    /* > ~31 years: no deadline (avoids float->int and now+t overflow, UB). */
    *deadline = t > 1e9 ? -1 : t > 0 ? -2 - (long long)(t * 1e6) : 0;
    return 0;
}

/* A lazy deadline (see parse_deadline) made absolute from now; others as they are. */
static inline void
resolve_deadline(long long *deadline)
{
    if (*deadline < -1) {
        *deadline = now_us() + (-2 - *deadline) + 1;
    }
}

enum { PARKED_WOKEN, PARKED_TIMEOUT, PARKED_RETRY, PARKED_ERROR };

/* Park on h (registered on ch). WOKEN: a waker's payload is in h. TIMEOUT:
 * h's claim is ours and its entries are withdrawn. RETRY: a signal handler
 * ran and returned; h is ours and withdrawn: go round again. ERROR: an
 * exception (a handler's); h is ours and withdrawn, or a waker won and *woken
 * is set: the caller undoes its payload and raises. */
static int
park(Channel *ch, PyObject *h, long long deadline, int *woken_then_error)
{
    *woken_then_error = 0;
    Post p;
    post_init(&p);
    if (ioserver_native_unpark_ok(h)) {
        /* Main thread: a signal that arrived since the caller's last check
         * (the GIL yield of a fed_by_loop recv, the GC allocation of h, the
         * step) would not interrupt a wait that starts after it: look first. */
        int check_first = ioserver_is_main_thread();
        for (;;) {
            long long us = deadline < 0 ? -1 : 0;
            if (deadline > 0) {
                us = deadline - now_us();
                if (us < 0) {
                    us = 0;
                }
            }
            int r = check_first ? IOSERVER_PARK_INTR : ioserver_tw_wait(h, us);
            check_first = 0;
            if (r == IOSERVER_PARK_WOKEN) {
                return PARKED_WOKEN;
            }
            if (r == IOSERVER_PARK_TIMEOUT) {
                drop(ch, h, &p);
                post_run(&p);
                return PARKED_TIMEOUT;
            }
            /* Interrupted by a signal: run the handlers while still queued, so
             * a handler that returns costs us nothing (not our place either). */
            if (PyErr_CheckSignals() == 0) {
                continue;  /* a wakeup that came meanwhile is consumed by the wait */
            }
            if (ioserver_claim(h)) {
                drop(ch, h, &p);
                post_run(&p);
                return PARKED_ERROR;
            }
            ioserver_tw_consume(h);  /* a waker won: the caller undoes its wakeup */
            *woken_then_error = 1;
            return PARKED_ERROR;
        }
    }
    long long us = deadline < 0 ? -1 : 0;
    if (deadline > 0) {
        us = deadline - now_us();
        if (us < 0) {
            us = 0;
        }
    }
    /* park/unpark replaced at run time (a test's hooks): go through them. */
    PyObject *t = deadline < 0 ? Py_NewRef(Py_None) : PyFloat_FromDouble(us / 1e6);
    PyObject *r = t == NULL ? NULL : PyObject_CallMethodOneArg(h, str_park, t);
    Py_XDECREF(t);
    int ok = r == NULL ? -1 : PyObject_IsTrue(r);
    Py_XDECREF(r);
    if (ok < 0) {
        if (ioserver_claim(h)) {
            drop(ch, h, &p);
            post_run(&p);
            return PARKED_ERROR;
        }
        ioserver_ThreadWakeup *tw = (ioserver_ThreadWakeup *)h;
        while (!tw->unparked) {
            Py_BEGIN_ALLOW_THREADS
            sched_yield();
            Py_END_ALLOW_THREADS
        }
        ioserver_tw_consume(h);
        *woken_then_error = 1;
        return PARKED_ERROR;
    }
    if (ok) {
        return PARKED_WOKEN;
    }
    drop(ch, h, &p);
    post_run(&p);
    return PARKED_TIMEOUT;
}

/* A recv (value NULL) or send about to park a thread: if the caller is a
 * greenlet or a using_task() scheduler, channel.py does the operation (its
 * result, or NULL); NOTHING (a new reference) means "a native thread: park". */
static PyObject *
green_op(Channel *ch, PyObject *value, long long deadline)
{
    PyObject *fn = value == NULL ? GreenRecv : GreenSend;
    if (fn == NULL || !ioserver_green_possible()) {
        return Py_NewRef(NOTHING);
    }
    long long us = deadline < 0 ? -1 : deadline - now_us();
    PyObject *t = us < 0 ? Py_NewRef(Py_None) : PyFloat_FromDouble(us > 0 ? us / 1e6 : 1e-6);
    if (t == NULL) {
        return NULL;
    }
    PyObject *r = value == NULL ? PyObject_CallFunctionObjArgs(fn, ch, t, NULL)
                                : PyObject_CallFunctionObjArgs(fn, ch, value, t, NULL);
    Py_DECREF(t);
    return r;
}

/* The value a waker left in a woken handle (borrowed). */
static inline PyObject *
payload_value(PyObject *h)
{
    return ((ioserver_Handle *)h)->value;
}

static PyObject *
recv_impl(Channel *ch, long long deadline, int nowait)
{
    Post p;
    post_init(&p);
    PyObject *v = NULL;
    int yielded = 0;
    for (;;) {
        step_begin(ch, &p);
        int r = try_recv_step(ch, &p, &v);
        if (r == 1) {
            post_run(&p);
            return v;
        }
        if (r < 0) {
            post_run(&p);
            raise_closed(ch, NULL);
            return NULL;
        }
        post_run(&p);
        if (nowait) {
            PyErr_SetNone(EmptyExc);
            return NULL;
        }
        resolve_deadline(&deadline);
        if (deadline == 0 || (deadline > 0 && now_us() >= deadline)) {
            PyErr_SetString(PyExc_TimeoutError, "recv timed out");
            return NULL;
        }
        if (ch->fed_by_loop && !yielded && ch->kind != RENDEZVOUS) {
            /* A port's inbox: yield the GIL once before paying for a park (the
             * I/O thread is often waiting for it with the next message). */
            yielded = 1;
            Py_BEGIN_ALLOW_THREADS
            sched_yield();
            Py_END_ALLOW_THREADS
            continue;
        }
        PyObject *g = green_op(ch, NULL, deadline);
        if (g != NOTHING) {
            return g;
        }
        Py_DECREF(g);
        PyObject *h = ioserver_tw_get(0);  /* owned; made before the step (a GC allocation) */
        if (h == NULL) {
            return NULL;
        }
        step_begin(ch, &p);
        r = try_recv_step(ch, &p, &v);
        if (r != 0) {
            post_trash(&p, h);
            post_run(&p);
            if (r == 1) {
                return v;
            }
            raise_closed(ch, NULL);
            return NULL;
        }
        if (waitq_push(&ch->recvq, h, 0, NULL) < 0) {
            post_trash(&p, h);
            post_run(&p);
            return NULL;
        }
        on_receiver_parked(ch, &p);
        post_run(&p);
        int woken_then_error;
        int pr = park(ch, h, deadline, &woken_then_error);
        if (pr == PARKED_TIMEOUT) {
            ioserver_tw_put(h);
            PyErr_SetString(PyExc_TimeoutError, "recv timed out");
            return NULL;
        }
        if (pr == PARKED_RETRY) {
            ioserver_tw_put(h);
            continue;
        }
        if (pr == PARKED_ERROR && !woken_then_error) {
            ioserver_tw_put(h);
            return NULL;
        }
        /* Woken: the payload is a message, or RETRY. */
        v = Py_NewRef(payload_value(h));
        ioserver_tw_put(h);
        if (v == RETRY) {
            Py_DECREF(v);
            if (pr == PARKED_ERROR) {
                return NULL;
            }
            continue;
        }
        if (pr == PARKED_ERROR || PyErr_CheckSignals() < 0) {
            /* Interrupted after the handover: put the message back at the head
             * (into the slot we still hold, if bounded), then raise. */
            step_begin(ch, &p);
            if (unrecv(ch, v, &p) < 0) {
                Py_DECREF(v);  /* out of memory: lost, and said so */
            }
            post_run(&p);
            return NULL;
        }
        if (ch->kind == BOUNDED) {
            step_begin(ch, &p);
            release_slot(ch, &p);
            post_run(&p);
        }
        return v;
    }
}

static PyObject *
send_impl(Channel *ch, PyObject *value, long long deadline, int nowait)
{
    Post p;
    post_init(&p);
    int selfstore = -1;
    for (;;) {
        step_begin(ch, &p);
        int r = try_send_step(ch, value, &p);
        post_run(&p);
        if (r == 1) {
            Py_RETURN_NONE;
        }
        if (r == -1) {
            raise_closed(ch, value);
            return NULL;
        }
        if (r == -2) {
            return NULL;
        }
        if (nowait) {
            raise_full(value);
            return NULL;
        }
        resolve_deadline(&deadline);
        if (deadline == 0 || (deadline > 0 && now_us() >= deadline)) {
            PyErr_SetString(PyExc_TimeoutError, "send timed out");
            return NULL;
        }
        PyObject *g = green_op(ch, value, deadline);
        if (g != NOTHING) {
            return g;
        }
        Py_DECREF(g);
        if (selfstore < 0) {
            selfstore = ioserver_is_main_thread();
        }
        PyObject *h = ioserver_tw_get(selfstore);  /* owned; made before the step */
        if (h == NULL) {
            return NULL;
        }
        step_begin(ch, &p);
        r = try_send_step(ch, value, &p);
        if (r != 0) {
            post_trash(&p, h);
            post_run(&p);
            if (r == 1) {
                Py_RETURN_NONE;
            }
            if (r == -1) {
                raise_closed(ch, value);
            }
            return NULL;
        }
        if (waitq_push(&ch->sendq, h, 0, value) < 0) {
            post_trash(&p, h);
            post_run(&p);
            return NULL;
        }
        if (ch->kind == BOUNDED) {
            admit(ch, &p);  /* a slot may have been freed meanwhile */
        }
        post_run(&p);
        int woken_then_error;
        int pr = park(ch, h, deadline, &woken_then_error);
        if (pr == PARKED_TIMEOUT) {
            ioserver_tw_put(h);
            PyErr_SetString(PyExc_TimeoutError, "send timed out");
            return NULL;
        }
        if (pr == PARKED_RETRY) {
            ioserver_tw_put(h);
            continue;
        }
        if (pr == PARKED_ERROR && !woken_then_error) {
            ioserver_tw_put(h);
            return NULL;
        }
        PyObject *mark = payload_value(h);  /* a mark: immortal for our purposes */
        ioserver_tw_put(h);
        if (mark == SENT) {
            if (pr == PARKED_ERROR) {
                PyErr_Clear();  /* the message was stored: the send happened */
            }
            Py_RETURN_NONE;
        }
        if (mark == CLOSED) {
            if (pr == PARKED_ERROR) {
                return NULL;
            }
            raise_closed(ch, value);
            return NULL;
        }
        if (mark == RETRY) {
            if (pr == PARKED_ERROR) {
                return NULL;
            }
            continue;
        }
        /* SLOT or WANT: ours to finish, or to give back if interrupted. */
        if (pr == PARKED_ERROR || PyErr_CheckSignals() < 0) {
            step_begin(ch, &p);
            abandon(ch, mark, &p);
            post_run(&p);
            return NULL;
        }
        step_begin(ch, &p);
        if (ch->closed) {
            if (ch->kind == BOUNDED) {
                ch->room++;
            }
            post_run(&p);
            raise_closed(ch, value);
            return NULL;
        }
        if (ch->kind == BOUNDED) {
            if (ring_push(ch, Py_NewRef(value)) < 0) {
                Py_DECREF(value);  /* the caller still holds one */
                ch->room++;
                post_run(&p);
                return NULL;
            }
            feed(ch, &p);
            post_run(&p);
            Py_RETURN_NONE;
        }
        r = hand_to_receiver(ch, value, &p);
        post_run(&p);
        if (r) {
            Py_RETURN_NONE;
        }
    }
}

/* ---- the type --------------------------------------------------------------------- */

static int
check_ready(void)
{
    if (ChannelClosed == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "ioserver._native: _setup() was not called");
        return -1;
    }
    return 0;
}

static PyObject *
channel_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    if (check_ready() < 0) {
        return NULL;
    }
    Channel *ch = (Channel *)type->tp_alloc(type, 0);  /* zeroed */
    if (ch == NULL) {
        return NULL;
    }
    ch->capacity = -1;
    ch->kind = UNBOUNDED;
    ch->gen = ioserver_fork_gen;
    return (PyObject *)ch;
}

static int
channel_init(Channel *ch, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"capacity", NULL};
    PyObject *capacity = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O:Channel", kwlist, &capacity)) {
        return -1;
    }
    if (capacity == Py_None) {
        ch->capacity = -1;
        ch->kind = UNBOUNDED;
        return 0;
    }
    Py_ssize_t n = -1;
    if (PyLong_Check(capacity) && !PyBool_Check(capacity)) {
        n = PyLong_AsSsize_t(capacity);
        if (n == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            n = -1;
        }
    }
    if (n < 0) {
        PyErr_Format(PyExc_ValueError, "capacity must be None or an int >= 0, not %R", capacity);
        return -1;
    }
    ch->capacity = n;
    ch->kind = n == 0 ? RENDEZVOUS : BOUNDED;
    ch->room = n;
    return 0;
}

static int
channel_traverse(Channel *ch, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(ch));
    for (Py_ssize_t i = 0; i < ch->rlen; i++) {
        Py_VISIT(ring_at(ch, i));
    }
    WaitQ *qs[2] = {&ch->recvq, &ch->sendq};
    for (int k = 0; k < 2; k++) {
        for (Py_ssize_t i = 0; i < qs[k]->len; i++) {
            Entry *e = waitq_at(qs[k], i);
            Py_VISIT(e->handle);
            Py_VISIT(e->value);
        }
    }
    Py_VISIT(ch->watchers);
    Py_VISIT(ch->anchor);
    return 0;
}

static int
channel_clear(Channel *ch)
{
    /* Detach everything first, then drop it: a finalizer that runs meanwhile
     * sees an empty channel, never a half-cleared one. */
    PyObject **ring = ch->ring;
    Py_ssize_t rhead = ch->rhead, rlen = ch->rlen, rcap = ch->rcap;
    WaitQ qs[2] = {ch->recvq, ch->sendq};
    ch->ring = NULL;
    ch->rhead = ch->rlen = ch->rcap = 0;
    memset(&ch->recvq, 0, sizeof(WaitQ));
    memset(&ch->sendq, 0, sizeof(WaitQ));
    for (Py_ssize_t i = 0; i < rlen; i++) {
        Py_DECREF(ring[(rhead + i) % rcap]);
    }
    PyMem_Free(ring);
    for (int k = 0; k < 2; k++) {
        for (Py_ssize_t i = 0; i < qs[k].len; i++) {
            Entry *e = &qs[k].items[(qs[k].head + i) % qs[k].cap];
            Py_DECREF(e->handle);
            Py_XDECREF(e->value);
        }
        PyMem_Free(qs[k].items);
    }
    Py_CLEAR(ch->watchers);
    Py_CLEAR(ch->anchor);
    return 0;
}

static void
channel_dealloc(Channel *ch)
{
    PyTypeObject *tp = Py_TYPE(ch);
    PyObject_GC_UnTrack(ch);
    if (ch->weakreflist != NULL) {
        PyObject_ClearWeakRefs((PyObject *)ch);
    }
    channel_clear(ch);
    tp->tp_free(ch);
    Py_DECREF(tp);
}

/* Parse ([value,] timeout=None) of the fast-call methods: npos is 1 for send. */
static int
parse_timeout(const char *name, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
              Py_ssize_t npos, PyObject **pos, PyObject **timeout)
{
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    *timeout = Py_None;
    if (nargs > npos + 1) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most %zd positional arguments", name,
                     npos + 1);
        return -1;
    }
    if (npos && nargs) {
        pos[0] = args[0];
    }
    if (nargs == npos + 1) {
        *timeout = args[npos];
    }
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *k = PyTuple_GET_ITEM(kwnames, i);
        if (nargs <= npos && PyUnicode_CompareWithASCIIString(k, "timeout") == 0) {
            *timeout = args[nargs + i];
        }
        else if (npos && nargs == 0 && PyUnicode_CompareWithASCIIString(k, "value") == 0) {
            pos[0] = args[nargs + i];
        }
        else {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument %R", name, k);
            return -1;
        }
    }
    return 0;
}

/* ---- Op: what arecv/asend return --------------------------------------------------- *
 *
 * An awaitable that does nothing until it is first sent to (awaited, or run
 * by a task), as the coroutine of an async def: an arecv/asend created and
 * never awaited, or cancelled before it started, did not happen. Its first
 * send tries the operation in one step; done, it returns the result at once
 * (am_send: no coroutine frame, no trip through the loop). Otherwise it
 * starts channel.py's slow path (a coroutine over the select protocol) and
 * forwards every later send/throw/close to it, as `yield from` would.
 *
 * In a trio task every await is a checkpoint (sched/trio.py), as in trio's
 * memory channels: first trio's checkpoint_if_cancelled (a pending cancel
 * yields, then raises Cancelled: the operation never happens), then the
 * operation in one step, then, if it happened, trio's
 * cancel_shielded_checkpoint, through which the Op forwards as through a slow
 * path and returns the result (`pending`) when it ends. Not ready, it starts
 * channel.py's _arecv_foreign/_asend_foreign, which parks the trio task. With
 * a using_task() scope live, Python decides (_arecv_foreign/_asend_foreign)
 * before anything is tried.
 * channel.py registers the type as a collections.abc.Coroutine, so
 * asyncio.create_task() takes it.
 */
typedef struct {
    PyObject_HEAD
    PyObject *ch;       /* owned: the channel */
    PyObject *value;    /* owned: asend's message, or NULL for arecv */
    PyObject *timeout;  /* owned */
    PyObject *inner;    /* owned: the slow path's coroutine, once started */
    PyObject *pending;  /* owned: a trio op's result, returned when `inner` ends */
    char is_send;
    char started;
} Op;

/* A few Ops that finished without starting the slow path, kept for reuse (as
 * CPython's own freelists: every `await ch.arecv()` would otherwise allocate
 * and free one). Touched only under the GIL; they own no references. */
#define OP_FREELIST 16
static Op *op_free[OP_FREELIST];
static int op_nfree = 0;

static PyObject *
op_new(Channel *ch, PyObject *value, PyObject *timeout)
{
    Op *op;
    if (op_nfree > 0) {
        op = op_free[--op_nfree];
        _Py_NewReference((PyObject *)op);  /* refcount 1, as a fresh object */
        Py_INCREF(OpType);  /* _Py_NewReference does not take the type's reference */
    }
    else {
        op = PyObject_GC_New(Op, OpType);  /* PyObject_Init increfs a heap type */
        if (op == NULL) {
            return NULL;
        }
    }
    op->ch = Py_NewRef((PyObject *)ch);
    op->value = Py_XNewRef(value);
    op->timeout = Py_NewRef(timeout);
    op->inner = NULL;
    op->pending = NULL;
    op->is_send = value != NULL;
    op->started = 0;
    /* Not tracked yet: until it starts the slow path it refers to no object
     * that could lead back to it (the channel, the message, the timeout). */
    return (PyObject *)op;
}

static int
op_traverse(Op *op, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(op->ch);
    Py_VISIT(op->value);
    Py_VISIT(op->timeout);
    Py_VISIT(op->inner);
    Py_VISIT(op->pending);
    return 0;
}

static int
op_clear(Op *op)
{
    Py_CLEAR(op->ch);
    Py_CLEAR(op->value);
    Py_CLEAR(op->timeout);
    Py_CLEAR(op->inner);
    Py_CLEAR(op->pending);
    return 0;
}

static void
op_dealloc(Op *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    int tracked = PyObject_GC_IsTracked((PyObject *)op);
    PyObject_GC_UnTrack(op);
    op_clear(op);
    if (!tracked && op_nfree < OP_FREELIST) {
        op_free[op_nfree++] = op;  /* untracked, no references: reused by op_new */
    }
    else {
        PyObject_GC_Del(op);
    }
    Py_DECREF(tp);
}

static PyObject *
op_await(PyObject *self)
{
    return Py_NewRef(self);
}

static int is_exact(Channel *ch);

/* A trio op's shielded checkpoint ended without returning (an exception, or
 * closed): a message it received goes back to the head of the channel, so
 * nothing is lost (a send that happened stays sent). Keeps the exception set. */
static void
op_drop_pending(Op *op)
{
    PyObject *v = op->pending;
    op->pending = NULL;
    if (v == NULL) {
        return;
    }
    if (!op->is_send) {
        ioserver_SavedError saved;
        ioserver_err_save(&saved);
        Post p;
        post_init(&p);
        Channel *ch = (Channel *)op->ch;
        step_begin(ch, &p);
        int r = unrecv(ch, v, &p);  /* steals v */
        post_run(&p);
        if (r < 0) {
            Py_DECREF(v);
            PyErr_Clear();
        }
        ioserver_err_restore(&saved);
    }
    else {
        Py_DECREF(v);
    }
}

/* Start the slow path: channel.py's coroutine fn(ch, [value,] timeout), then
 * forward the first send to it. */
static PySendResult
op_start_inner(Op *op, PyObject *fn, PyObject **result)
{
    op->inner = op->is_send ? PyObject_CallFunctionObjArgs(fn, op->ch, op->value, op->timeout, NULL)
                            : PyObject_CallFunctionObjArgs(fn, op->ch, op->timeout, NULL);
    if (op->inner == NULL) {
        *result = NULL;
        return PYGEN_ERROR;
    }
    /* The slow path's coroutine may lead back here (its frame, the task). */
    PyObject_GC_Track(op);
    return PyIter_Send(op->inner, Py_None, result);
}

/* Run trio's coroutine function fn to its first yield: PYGEN_NEXT with the
 * yielded value in *result and the coroutine in op->inner (forwarded to from
 * now on), PYGEN_RETURN if it finished at once, PYGEN_ERROR if it raised. */
static PySendResult
op_trio_step(Op *op, PyObject *fn, PyObject **result)
{
    PyObject *coro = PyObject_CallNoArgs(fn);
    if (coro == NULL) {
        *result = NULL;
        return PYGEN_ERROR;
    }
    PySendResult s = PyIter_Send(coro, Py_None, result);
    if (s == PYGEN_NEXT) {
        /* Not tracked: trio's checkpoint coroutines lead back to no Op (and the
         * untracked Op goes back to the freelist). */
        op->inner = coro;
        return s;
    }
    Py_DECREF(coro);
    if (s == PYGEN_RETURN) {
        Py_CLEAR(*result);
    }
    return s;
}

/* A trio task's arecv/asend (see Op): checkpoint_if_cancelled, the operation
 * in one step, cancel_shielded_checkpoint; not ready, the slow path. */
static PySendResult
op_trio(Op *op, PyObject **result)
{
    PySendResult s = op_trio_step(op, CheckpointIfCancelled, result);
    if (s != PYGEN_RETURN) {
        return s;  /* cancelled: it yields, then raises Cancelled; nothing happened */
    }
    Channel *ch = (Channel *)op->ch;
    PyObject *v = NULL;
    Post p;
    post_init(&p);
    if (!op->is_send) {
        step_begin(ch, &p);
        if (try_recv_step(ch, &p, &v) != 1) {
            v = NULL;
        }
        post_run(&p);
    }
    else if (is_exact(ch)) {
        step_begin(ch, &p);
        int r = try_send_step(ch, op->value, &p);
        post_run(&p);
        if (r == 1) {
            v = Py_NewRef(Py_None);
        }
        else if (r == -2) {
            PyErr_Clear();  /* the slow path tries again, and raises if it must */
        }
    }
    if (v == NULL) {  /* not ready: park (the cancel check and the try are done) */
        op->inner = op->is_send ? PyObject_CallFunctionObjArgs(AsendTrioPark, op->ch, TrioTaskObj,
                                                               op->value, op->timeout, NULL)
                                : PyObject_CallFunctionObjArgs(ArecvTrioPark, op->ch, TrioTaskObj,
                                                               op->timeout, NULL);
        if (op->inner == NULL) {
            *result = NULL;
            return PYGEN_ERROR;
        }
        PyObject_GC_Track(op);  /* the park's coroutine may lead back here */
        return PyIter_Send(op->inner, Py_None, result);
    }
    op->pending = v;
    s = op_trio_step(op, CancelShieldedCheckpoint, result);
    if (s == PYGEN_RETURN) {
        *result = op->pending;
        op->pending = NULL;
    }
    else if (s == PYGEN_ERROR) {
        op_drop_pending(op);
    }
    return s;
}

static PySendResult
op_am_send(Op *op, PyObject *arg, PyObject **result)
{
    if (op->inner != NULL) {
        PySendResult s = PyIter_Send(op->inner, arg, result);
        if (op->pending != NULL && s != PYGEN_NEXT) {
            if (s == PYGEN_RETURN) {  /* the shielded checkpoint ended: the op's result */
                Py_SETREF(*result, op->pending);
                op->pending = NULL;
            }
            else {
                op_drop_pending(op);
            }
        }
        return s;
    }
    if (op->started || op->ch == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "cannot reuse an already awaited channel operation");
        *result = NULL;
        return PYGEN_ERROR;
    }
    op->started = 1;
    Channel *ch = (Channel *)op->ch;
    int foreign = ArecvForeign != NULL ? ioserver_async_foreign() : 0;
    if (foreign == 2 && CheckpointIfCancelled != NULL && ArecvTrioPark != NULL) {
        return op_trio(op, result);
    }
    if (foreign) {
        return op_start_inner(op, op->is_send ? AsendForeign : ArecvForeign, result);
    }
    Post p;
    post_init(&p);
    if (!op->is_send) {
        PyObject *v;
        step_begin(ch, &p);
        int r = try_recv_step(ch, &p, &v);
        post_run(&p);
        if (r == 1) {
            *result = v;
            return PYGEN_RETURN;
        }
        return op_start_inner(op, ArecvSlow, result);
    }
    else {
        if (is_exact(ch)) {
            step_begin(ch, &p);
            int r = try_send_step(ch, op->value, &p);
            post_run(&p);
            if (r == 1) {
                *result = Py_NewRef(Py_None);
                return PYGEN_RETURN;
            }
            if (r == -2) {
                PyErr_Clear();  /* the slow path tries again, and raises if it must */
            }
        }
        return op_start_inner(op, AsendSlow, result);
    }
}

static PyObject *
op_send(Op *op, PyObject *arg)
{
    PyObject *result;
    PySendResult r = op_am_send(op, arg, &result);
    if (r == PYGEN_NEXT) {
        return result;
    }
    if (r == PYGEN_RETURN) {
        /* Finished: the value travels in StopIteration. */
        PyObject *exc = PyObject_CallOneArg(PyExc_StopIteration, result);
        Py_DECREF(result);
        if (exc != NULL) {
            PyErr_SetObject(PyExc_StopIteration, exc);
            Py_DECREF(exc);
        }
    }
    return NULL;
}

static PyObject *
op_iternext(Op *op)
{
    return op_send(op, Py_None);
}

static PyObject *
op_throw(Op *op, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "throw(type[, value[, traceback]])");
        return NULL;
    }
    if (op->inner != NULL) {
        PyObject *meth = PyObject_GetAttrString(op->inner, "throw");
        if (meth == NULL) {
            return NULL;
        }
        PyObject *r = PyObject_Vectorcall(meth, args, nargs, NULL);
        Py_DECREF(meth);
        if (r == NULL && op->pending != NULL) {
            if (PyErr_ExceptionMatches(PyExc_StopIteration)) {
                /* the shielded checkpoint ended: return the op's result */
                PyErr_Clear();
                PyObject *v = op->pending;
                op->pending = NULL;
                PyObject *exc = PyObject_CallOneArg(PyExc_StopIteration, v);
                Py_DECREF(v);
                if (exc != NULL) {
                    PyErr_SetObject(PyExc_StopIteration, exc);
                    Py_DECREF(exc);
                }
            }
            else {
                op_drop_pending(op);
            }
        }
        return r;
    }
    op->started = 1;  /* thrown into before it started: the operation never happens */
    PyObject *typ = args[0], *val = nargs > 1 ? args[1] : NULL;
    if (PyExceptionInstance_Check(typ)) {
        PyErr_SetObject((PyObject *)Py_TYPE(typ), typ);
    }
    else if (val != NULL && val != Py_None) {
        PyErr_SetObject(typ, val);
    }
    else {
        PyErr_SetNone(typ);
    }
    return NULL;
}

static PyObject *
op_close(Op *op, PyObject *unused)
{
    op->started = 1;
    if (op->inner != NULL) {
        PyObject *r = PyObject_CallMethod(op->inner, "close", NULL);
        op_drop_pending(op);  /* closed at the shielded checkpoint: give the message back */
        return r;
    }
    Py_RETURN_NONE;
}

static PyMethodDef op_methods[] = {
    {"send", (PyCFunction)op_send, METH_O, NULL},
    {"throw", (PyCFunction)(void (*)(void))op_throw, METH_FASTCALL, NULL},
    {"close", (PyCFunction)op_close, METH_NOARGS, NULL},
    {NULL},
};

static PyType_Slot op_slots[] = {
    {Py_tp_doc, "A channel's arecv/asend: an awaitable that acts when first awaited."},
    {Py_tp_dealloc, op_dealloc},
    {Py_tp_traverse, op_traverse},
    {Py_tp_clear, op_clear},
    {Py_am_await, op_await},
    {Py_am_send, op_am_send},
    {Py_tp_iter, op_await},
    {Py_tp_iternext, op_iternext},
    {Py_tp_methods, op_methods},
    {0, NULL},
};

static PyType_Spec op_spec = {
    .name = "ioserver._native._Op",
    .basicsize = sizeof(Op),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION | Py_TPFLAGS_HAVE_GC,
    .slots = op_slots,
};

static PyObject *
channel_arecv(Channel *ch, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *timeout = Py_None;
    if ((nargs || kwnames) && parse_timeout("arecv", args, nargs, kwnames, 0, NULL, &timeout) < 0) {
        return NULL;
    }
    return op_new(ch, NULL, timeout);
}

static PyObject *
channel_asend(Channel *ch, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *value = NULL, *timeout;
    if (parse_timeout("asend", args, nargs, kwnames, 1, &value, &timeout) < 0) {
        return NULL;
    }
    if (value == NULL) {
        PyErr_SetString(PyExc_TypeError, "asend() missing argument 'value'");
        return NULL;
    }
    return op_new(ch, value, timeout);
}

static PyObject *
channel_send(Channel *ch, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *value = NULL, *timeout;
    if (nargs == 1 && kwnames == NULL) {
        return send_impl(ch, args[0], -1, 0);  /* the common case */
    }
    if (parse_timeout("send", args, nargs, kwnames, 1, &value, &timeout) < 0) {
        return NULL;
    }
    if (value == NULL) {
        PyErr_SetString(PyExc_TypeError, "send() missing argument 'value'");
        return NULL;
    }
    long long deadline;
    if (parse_deadline(timeout, &deadline) < 0) {
        return NULL;
    }
    return send_impl(ch, value, deadline, 0);
}

static PyObject *
channel_try_send(Channel *ch, PyObject *value)
{
    return send_impl(ch, value, 0, 1);
}

static PyObject *
channel_recv(Channel *ch, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *timeout;
    if (nargs == 0 && kwnames == NULL) {
        return recv_impl(ch, -1, 0);
    }
    if (parse_timeout("recv", args, nargs, kwnames, 0, NULL, &timeout) < 0) {
        return NULL;
    }
    long long deadline;
    if (parse_deadline(timeout, &deadline) < 0) {
        return NULL;
    }
    return recv_impl(ch, deadline, 0);
}

static PyObject *
channel_try_recv(Channel *ch, PyObject *unused)
{
    return recv_impl(ch, 0, 1);
}

static PyObject *
channel_close(Channel *ch, PyObject *unused)
{
    Post p;
    post_init(&p);
    step_begin(ch, &p);
    if (ch->closed) {
        Py_RETURN_NONE;
    }
    ch->closed = 1;
    while (ch->recvq.len) {
        Entry e = waitq_pop(&ch->recvq);
        if (ioserver_claim(e.handle)) {
            hand(&p, e.handle, e.index, Py_NewRef(RETRY));
        }
        entry_trash(&p, e);
    }
    while (ch->sendq.len) {
        Entry e = waitq_pop(&ch->sendq);
        if (ioserver_claim(e.handle)) {
            hand(&p, e.handle, e.index, Py_NewRef(CLOSED));
        }
        entry_trash(&p, e);
    }
    p.watchers = ch->watchers;  /* moved: each finds the channel closed and stops */
    ch->watchers = NULL;
    post_run(&p);
    Py_RETURN_NONE;
}

static Py_ssize_t
count_live(WaitQ *q)
{
    Py_ssize_t n = 0;
    for (Py_ssize_t i = 0; i < q->len; i++) {
        n += !is_claimed(waitq_at(q, i)->handle);
    }
    return n;
}

static PyObject *
channel_statistics(Channel *ch, PyObject *unused)
{
    /* One step: read everything, then build the snapshot. */
    Py_ssize_t buffered = ch->rlen, senders = count_live(&ch->sendq);
    Py_ssize_t receivers = count_live(&ch->recvq);
    int closed = ch->closed;
    PyObject *capacity = ch->capacity < 0 ? Py_NewRef(Py_None) : PyLong_FromSsize_t(ch->capacity);
    if (capacity == NULL) {
        return NULL;
    }
    PyObject *kw = Py_BuildValue("{s:n,s:N,s:n,s:n,s:O}", "buffered", buffered, "capacity",
                                 capacity, "waiting_senders", senders, "waiting_receivers",
                                 receivers, "closed", closed ? Py_True : Py_False);
    if (kw == NULL) {
        return NULL;
    }
    PyObject *empty = PyTuple_New(0);
    PyObject *r = empty ? PyObject_Call(StatisticsCls, empty, kw) : NULL;
    Py_XDECREF(empty);
    Py_DECREF(kw);
    return r;
}

static int
check_handle(PyObject *h)
{
    if (!PyObject_TypeCheck(h, ioserver_HandleType)) {
        PyErr_Format(PyExc_TypeError, "a native channel parks native WakeupHandles, not %R",
                     (PyObject *)Py_TYPE(h));
        return -1;
    }
    return 0;
}

static PyObject *
sel_try_recv(Channel *ch, PyObject *unused)
{
    Post p;
    post_init(&p);
    PyObject *v;
    step_begin(ch, &p);
    int r = try_recv_step(ch, &p, &v);
    post_run(&p);
    if (r == 1) {
        return v;
    }
    if (r < 0) {
        raise_closed(ch, NULL);
        return NULL;
    }
    return Py_NewRef(NOTHING);
}

static int
is_exact(Channel *ch)
{
    return (PyObject *)Py_TYPE(ch) == ExactCls || Py_TYPE(ch) == ChannelType;
}

static PyObject *
sel_try_send(Channel *ch, PyObject *value)
{
    if (!is_exact(ch)) {
        /* A subclass may define its own try_send (the daemon's SessionSink). */
        PyObject *r = PyObject_CallMethodOneArg((PyObject *)ch, str_try_send, value);
        if (r == NULL) {
            if (PyErr_ExceptionMatches(FullExc)) {
                PyErr_Clear();
                Py_RETURN_FALSE;
            }
            return NULL;
        }
        Py_DECREF(r);
        Py_RETURN_TRUE;
    }
    Post p;
    post_init(&p);
    step_begin(ch, &p);
    int r = try_send_step(ch, value, &p);
    post_run(&p);
    if (r == -1) {
        raise_closed(ch, value);
        return NULL;
    }
    if (r == -2) {
        return NULL;
    }
    return PyBool_FromLong(r);
}

static PyObject *
sel_register_recv(Channel *ch, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t index;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_sel_register_recv(handle, index)");
        return NULL;
    }
    if (check_handle(args[0]) < 0) {
        return NULL;
    }
    index = PyLong_AsSsize_t(args[1]);
    if (index == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Post p;
    post_init(&p);
    step_begin(ch, &p);
    if (recv_ready(ch, args[0], &p)) {
        post_run(&p);
        Py_RETURN_FALSE;
    }
    if (waitq_push(&ch->recvq, args[0], index, NULL) < 0) {
        post_run(&p);
        return NULL;
    }
    on_receiver_parked(ch, &p);
    post_run(&p);
    Py_RETURN_TRUE;
}

static PyObject *
sel_register_send(Channel *ch, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t index;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "_sel_register_send(handle, index, value)");
        return NULL;
    }
    if (check_handle(args[0]) < 0) {
        return NULL;
    }
    index = PyLong_AsSsize_t(args[1]);
    if (index == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Post p;
    post_init(&p);
    step_begin(ch, &p);
    if (send_ready(ch, args[0])) {
        post_run(&p);
        Py_RETURN_FALSE;
    }
    if (waitq_push(&ch->sendq, args[0], index, args[2]) < 0) {
        post_run(&p);
        return NULL;
    }
    if (ch->kind == BOUNDED) {
        admit(ch, &p);
    }
    post_run(&p);
    Py_RETURN_TRUE;
}

static PyObject *
sel_unregister(Channel *ch, PyObject *handle)
{
    Post p;
    post_init(&p);
    step_begin(ch, &p);
    drop(ch, handle, &p);
    post_run(&p);
    Py_RETURN_NONE;
}

static PyObject *
sel_unrecv(Channel *ch, PyObject *value)
{
    Post p;
    post_init(&p);
    step_begin(ch, &p);
    int r = unrecv(ch, Py_NewRef(value), &p);
    post_run(&p);
    if (r < 0) {
        Py_DECREF(value);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
sel_release_slot(Channel *ch, PyObject *unused)
{
    Post p;
    post_init(&p);
    step_begin(ch, &p);
    release_slot(ch, &p);
    post_run(&p);
    Py_RETURN_NONE;
}

static PyObject *
sel_claimed_send(Channel *ch, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_sel_claimed_send(value, mark)");
        return NULL;
    }
    PyObject *value = args[0];
    if (ch->kind == UNBOUNDED) {
        Py_RETURN_FALSE;  /* never parks a sender */
    }
    Post p;
    post_init(&p);
    step_begin(ch, &p);
    if (ch->closed) {
        if (ch->kind == BOUNDED) {
            ch->room++;  /* the slot reserved for us */
        }
        post_run(&p);
        raise_closed(ch, value);
        return NULL;
    }
    int r;
    if (ch->kind == BOUNDED) {
        r = ring_push(ch, Py_NewRef(value)) == 0;
        if (!r) {
            Py_DECREF(value);
            ch->room++;
            post_run(&p);
            return NULL;
        }
        feed(ch, &p);
    }
    else {
        r = hand_to_receiver(ch, value, &p);
    }
    post_run(&p);
    return PyBool_FromLong(r);
}

static PyObject *
sel_abandon(Channel *ch, PyObject *mark)
{
    Post p;
    post_init(&p);
    step_begin(ch, &p);
    abandon(ch, mark, &p);
    post_run(&p);
    Py_RETURN_NONE;
}

static PyObject *
notify_when_room(Channel *ch, PyObject *callback)
{
    if (ch->kind != BOUNDED || ch->closed || ch->rlen <= ch->capacity / 2) {
        Py_RETURN_FALSE;
    }
    if (ch->watchers == NULL) {
        PyObject *list = PyList_New(0);  /* a GC allocation: state re-checked below */
        if (list == NULL) {
            return NULL;
        }
        if (ch->watchers == NULL) {
            ch->watchers = list;
        }
        else {
            Py_DECREF(list);
        }
        if (ch->closed || ch->rlen <= ch->capacity / 2) {
            Py_RETURN_FALSE;  /* an empty watcher list is harmless */
        }
    }
    if (PyList_Append(ch->watchers, callback) < 0) {
        return NULL;
    }
    Py_RETURN_TRUE;
}

static PyObject *
put_overflow(Channel *ch, PyObject *value)
{
    Post p;
    post_init(&p);
    step_begin(ch, &p);
    if (ch->closed) {
        post_run(&p);
        raise_closed(ch, value);
        return NULL;
    }
    if (ring_push(ch, Py_NewRef(value)) < 0) {
        Py_DECREF(value);
        post_run(&p);
        return NULL;
    }
    if (ch->kind == BOUNDED && ch->room > 0) {
        ch->room--;  /* keep the slot count exact when there is a free slot */
    }
    feed(ch, &p);
    post_run(&p);
    Py_RETURN_NONE;
}

static int
ptr_cmp(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t) * (PyObject *const *)a, y = (uintptr_t) * (PyObject *const *)b;
    return x < y ? -1 : x > y;
}

static PyObject *
take_matching(Channel *ch, PyObject *predicate)
{
    /* Decide on a snapshot first (the predicate may raise: then nothing is
     * taken). The snapshot's references keep every candidate alive, so their
     * addresses stay unique until the step below. */
    Py_ssize_t n = ch->rlen;
    PyObject *snapshot = PyList_New(n);
    if (snapshot == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyList_SET_ITEM(snapshot, i, Py_NewRef(ring_at(ch, i)));
    }
    PyObject **chosen = PyMem_Malloc((n ? n : 1) * sizeof(PyObject *));
    if (chosen == NULL) {
        Py_DECREF(snapshot);
        return PyErr_NoMemory();
    }
    Py_ssize_t nchosen = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(snapshot); i++) {
        PyObject *item = PyList_GET_ITEM(snapshot, i);
        PyObject *r = PyObject_CallOneArg(predicate, item);
        int t = r == NULL ? -1 : PyObject_IsTrue(r);
        Py_XDECREF(r);
        if (t < 0) {
            PyMem_Free(chosen);
            Py_DECREF(snapshot);
            return NULL;
        }
        if (t) {
            chosen[nchosen++] = item;
        }
    }
    /* The result, made before the step (a GC allocation): one None per chosen
     * message, replaced inside the step by the messages still there. */
    PyObject *taken = PyList_New(nchosen);
    if (taken == NULL || nchosen == 0) {
        PyMem_Free(chosen);
        Py_DECREF(snapshot);
        return taken;
    }
    for (Py_ssize_t i = 0; i < nchosen; i++) {
        PyList_SET_ITEM(taken, i, Py_NewRef(Py_None));
    }
    qsort(chosen, nchosen, sizeof(PyObject *), ptr_cmp);
    Post p;
    post_init(&p);
    step_begin(ch, &p);
    Py_ssize_t kept = 0, ntaken = 0, len = ch->rlen;
    for (Py_ssize_t i = 0; i < len; i++) {
        PyObject *item = ring_at(ch, i);
        if (ntaken < nchosen
            && bsearch(&item, chosen, nchosen, sizeof(PyObject *), ptr_cmp) != NULL) {
            /* Move the ring's reference into the list; None's is dropped
             * after the step (None is never freed anyway). */
            post_trash(&p, PyList_GET_ITEM(taken, ntaken));
            PyList_SET_ITEM(taken, ntaken, item);
            ntaken++;
        }
        else {
            Py_ssize_t j = ch->rhead + kept;
            ch->ring[j >= ch->rcap ? j - ch->rcap : j] = item;
            kept++;
        }
    }
    ch->rlen = kept;
    if (ch->kind == BOUNDED && ntaken) {
        ch->room += ntaken;
        admit(ch, &p);
    }
    post_run(&p);
    PyMem_Free(chosen);
    Py_DECREF(snapshot);
    if (ntaken < nchosen) {
        /* Some were received meanwhile: cut the unused tail. */
        if (PyList_SetSlice(taken, ntaken, nchosen, NULL) < 0) {
            Py_DECREF(taken);
            return NULL;
        }
    }
    return taken;
}

static Py_ssize_t
channel_len(Channel *ch)
{
    return ch->rlen;
}

static PyObject *
channel_repr(Channel *ch)
{
    /* "<Channel unbounded buffered=0>": the public name, whatever the flavour;
       a subclass (the daemon's sink...) shows its own name. */
    const char *kind = "Channel";
    PyObject *name = NULL;
    if (!is_exact(ch)) {
        name = PyType_GetQualName(Py_TYPE(ch));
        if (name == NULL) {
            return NULL;
        }
        kind = PyUnicode_AsUTF8(name);
        if (kind == NULL) {
            Py_DECREF(name);
            return NULL;
        }
    }
    const char *closed = ch->closed ? " closed" : "";
    PyObject *r;
    if (ch->capacity < 0) {
        r = PyUnicode_FromFormat("<%s unbounded buffered=%zd%s>", kind, ch->rlen, closed);
    }
    else if (ch->capacity == 0) {
        r = PyUnicode_FromFormat("<%s rendezvous%s>", kind, closed);
    }
    else {
        r = PyUnicode_FromFormat("<%s capacity=%zd buffered=%zd%s>", kind, ch->capacity,
                                 ch->rlen, closed);
    }
    Py_XDECREF(name);
    return r;
}

static PyObject *
get_capacity(Channel *ch, void *closure)
{
    if (ch->capacity < 0) {
        Py_RETURN_NONE;
    }
    return PyLong_FromSsize_t(ch->capacity);
}

static PyObject *
get_closed(Channel *ch, void *closure)
{
    return PyBool_FromLong(ch->closed);
}

static PyObject *
get_fed_by_loop(Channel *ch, void *closure)
{
    return PyBool_FromLong(ch->fed_by_loop);
}

static int
set_fed_by_loop(Channel *ch, PyObject *value, void *closure)
{
    int t = value == NULL ? 0 : PyObject_IsTrue(value);
    if (t < 0) {
        return -1;
    }
    ch->fed_by_loop = (char)t;
    return 0;
}

static PyObject *
get_anchor(Channel *ch, void *closure)
{
    return Py_NewRef(ch->anchor ? ch->anchor : Py_None);
}

static int
set_anchor(Channel *ch, PyObject *value, void *closure)
{
    PyObject *old = ch->anchor;
    ch->anchor = (value == NULL || value == Py_None) ? NULL : Py_NewRef(value);
    Py_XDECREF(old);
    return 0;
}

static PyMethodDef channel_methods[] = {
    {"send", (PyCFunction)(void (*)(void))channel_send, METH_FASTCALL | METH_KEYWORDS,
     "send(value, timeout=None): send value, blocking while the channel is full."},
    {"try_send", (PyCFunction)channel_try_send, METH_O,
     "Send without blocking; raises Full (with .value) or ChannelClosed."},
    {"recv", (PyCFunction)(void (*)(void))channel_recv, METH_FASTCALL | METH_KEYWORDS,
     "recv(timeout=None): receive the next message, blocking while there is none."},
    {"try_recv", (PyCFunction)channel_try_recv, METH_NOARGS,
     "Receive without blocking; raises Empty or ChannelClosed."},
    {"arecv", (PyCFunction)(void (*)(void))channel_arecv, METH_FASTCALL | METH_KEYWORDS,
     "arecv(timeout=None): recv for coroutines (an awaitable). Cancelled, it took no message."},
    {"asend", (PyCFunction)(void (*)(void))channel_asend, METH_FASTCALL | METH_KEYWORDS,
     "asend(value, timeout=None): send for coroutines (an awaitable). Cancelled, it did not "
     "happen."},
    {"close", (PyCFunction)channel_close, METH_NOARGS,
     "Close the channel. Idempotent; never blocks."},
    {"statistics", (PyCFunction)channel_statistics, METH_NOARGS,
     "A frozen snapshot: buffered, capacity, waiting senders/receivers, closed."},
    {"_sel_try_recv", (PyCFunction)sel_try_recv, METH_NOARGS, NULL},
    {"_sel_try_send", (PyCFunction)sel_try_send, METH_O, NULL},
    {"_sel_register_recv", (PyCFunction)(void (*)(void))sel_register_recv, METH_FASTCALL, NULL},
    {"_sel_register_send", (PyCFunction)(void (*)(void))sel_register_send, METH_FASTCALL, NULL},
    {"_sel_unregister", (PyCFunction)sel_unregister, METH_O, NULL},
    {"_sel_unrecv", (PyCFunction)sel_unrecv, METH_O, NULL},
    {"_sel_release_slot", (PyCFunction)sel_release_slot, METH_NOARGS, NULL},
    {"_sel_claimed_send", (PyCFunction)(void (*)(void))sel_claimed_send, METH_FASTCALL, NULL},
    {"_sel_abandon", (PyCFunction)sel_abandon, METH_O, NULL},
    {"_notify_when_room", (PyCFunction)notify_when_room, METH_O, NULL},
    {"_put_overflow", (PyCFunction)put_overflow, METH_O, NULL},
    {"_take_matching", (PyCFunction)take_matching, METH_O, NULL},
    {NULL},
};

static PyGetSetDef channel_getset[] = {
    {"capacity", (getter)get_capacity, NULL,
     "None for unbounded, else the capacity (0 for rendezvous).", NULL},
    {"closed", (getter)get_closed, NULL, "Whether close() was called.", NULL},
    {"_fed_by_loop", (getter)get_fed_by_loop, (setter)set_fed_by_loop,
     "A port's inbox: receivers yield the GIL once before parking.", NULL},
    {"_anchor", (getter)get_anchor, (setter)set_anchor,
     "What must live as long as this inbox (drivers/base.py).", NULL},
    {NULL},
};

static PyMemberDef channel_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(Channel, weakreflist), READONLY},
    {NULL},
};

static PyType_Slot channel_slots[] = {
    {Py_tp_doc, "The native channel (see ioserver.channel.Channel)."},
    {Py_tp_new, channel_new},
    {Py_tp_init, channel_init},
    {Py_tp_dealloc, channel_dealloc},
    {Py_tp_traverse, channel_traverse},
    {Py_tp_clear, channel_clear},
    {Py_tp_repr, channel_repr},
    {Py_tp_methods, channel_methods},
    {Py_tp_getset, channel_getset},
    {Py_tp_members, channel_members},
    {Py_sq_length, channel_len},
    {0, NULL},
};

static PyType_Spec channel_spec = {
    .name = "ioserver._native.Channel",
    .basicsize = sizeof(Channel),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = channel_slots,
};

Py_ssize_t
ioserver_channel_buffered(PyObject *o)
{
    if (ChannelType == NULL || !PyObject_TypeCheck(o, ChannelType)) {
        return -1;
    }
    return ((Channel *)o)->rlen;
}

int
ioserver_channel_kind(PyObject *o)
{
    if (ChannelType == NULL || !PyObject_TypeCheck(o, ChannelType)) {
        return 0;
    }
    return is_exact((Channel *)o) ? 2 : 1;
}

int
ioserver_channel_poll(PyObject *o, PyObject *value, PyObject **out)
{
    Channel *ch = (Channel *)o;
    Post p;
    post_init(&p);
    step_begin(ch, &p);
    int r = value == NULL ? try_recv_step(ch, &p, out) : try_send_step(ch, value, &p);
    post_run(&p);
    return r;
}

int
ioserver_channel_register(PyObject *o, PyObject *h, Py_ssize_t index, PyObject *value)
{
    Channel *ch = (Channel *)o;
    Post p;
    post_init(&p);
    step_begin(ch, &p);
    int ready = value == NULL ? recv_ready(ch, h, &p) : send_ready(ch, h);
    if (ready) {
        post_run(&p);
        return 0;
    }
    if (waitq_push(value == NULL ? &ch->recvq : &ch->sendq, h, index, value) < 0) {
        post_run(&p);
        return -1;
    }
    if (value == NULL) {
        on_receiver_parked(ch, &p);
    }
    else if (ch->kind == BOUNDED) {
        admit(ch, &p);
    }
    post_run(&p);
    return 1;
}

void
ioserver_channel_unregister(PyObject *o, PyObject *h)
{
    Channel *ch = (Channel *)o;
    Post p;
    post_init(&p);
    step_begin(ch, &p);
    drop(ch, h, &p);
    post_run(&p);
}

int
ioserver_channel_claimed_send(PyObject *o, PyObject *value, PyObject *mark)
{
    Channel *ch = (Channel *)o;
    if (ch->kind == UNBOUNDED) {
        return 0;
    }
    Post p;
    post_init(&p);
    step_begin(ch, &p);
    int r;
    if (ch->closed) {
        if (ch->kind == BOUNDED) {
            ch->room++;  /* the slot reserved for us */
        }
        r = -1;
    }
    else if (ch->kind == BOUNDED) {
        if (ring_push(ch, Py_NewRef(value)) < 0) {
            Py_DECREF(value);  /* the caller holds another */
            ch->room++;
            r = -2;
        }
        else {
            feed(ch, &p);
            r = 1;
        }
    }
    else {
        r = hand_to_receiver(ch, value, &p);
    }
    post_run(&p);
    return r;
}

void
ioserver_channel_release_slot(PyObject *o)
{
    Post p;
    post_init(&p);
    step_begin((Channel *)o, &p);
    release_slot((Channel *)o, &p);
    post_run(&p);
}

int
ioserver_channel_unrecv(PyObject *o, PyObject *value)
{
    Post p;
    post_init(&p);
    step_begin((Channel *)o, &p);
    int r = unrecv((Channel *)o, Py_NewRef(value), &p);
    post_run(&p);
    if (r < 0) {
        Py_DECREF(value);
    }
    return r;
}

void
ioserver_channel_abandon(PyObject *o, PyObject *mark)
{
    Post p;
    post_init(&p);
    step_begin((Channel *)o, &p);
    abandon((Channel *)o, mark, &p);
    post_run(&p);
}

PyObject *
ioserver_mark(int which)
{
    return which == IOSERVER_RETRY ? RETRY : which == IOSERVER_SENT ? SENT : CLOSED;
}

/* _setup(ChannelClosed, Empty, Full, ChannelStatistics, exact_class,
 *        RETRY, SLOT, WANT, SENT, CLOSED, NOTHING, arecv_slow, asend_slow):
 * called once by channel.py. */
static PyObject *
channel_setup(PyObject *module, PyObject *args)
{
    PyObject *o[13];
    if (!PyArg_UnpackTuple(args, "_setup", 13, 13, &o[0], &o[1], &o[2], &o[3], &o[4], &o[5],
                           &o[6], &o[7], &o[8], &o[9], &o[10], &o[11], &o[12])) {
        return NULL;
    }
    PyObject **slots[13] = {&ChannelClosed, &EmptyExc, &FullExc,  &StatisticsCls, &ExactCls,
                            &RETRY,         &SLOT,     &WANT,     &SENT,          &CLOSED,
                            &NOTHING,       &ArecvSlow, &AsendSlow};
    for (int i = 0; i < 13; i++) {
        Py_XSETREF(*slots[i], Py_NewRef(o[i]));  /* owned for the process's life */
    }
    Py_RETURN_NONE;
}

/* _setup_green(green_recv, green_send, arecv_foreign, asend_foreign,
 *              arecv_trio_park, asend_trio_park): channel.py's paths for a caller
 * that is not a native thread (see green_op) and for an await that is not an
 * asyncio task's (see Op). */
static PyObject *
channel_setup_green(PyObject *module, PyObject *args)
{
    PyObject *recv, *send, *arecv, *asend, *arecv_park, *asend_park;
    if (!PyArg_UnpackTuple(args, "_setup_green", 6, 6, &recv, &send, &arecv, &asend, &arecv_park,
                           &asend_park)) {
        return NULL;
    }
    Py_XSETREF(ArecvTrioPark, Py_NewRef(arecv_park));
    Py_XSETREF(AsendTrioPark, Py_NewRef(asend_park));
    Py_XSETREF(GreenRecv, Py_NewRef(recv));
    Py_XSETREF(GreenSend, Py_NewRef(send));
    Py_XSETREF(AsendForeign, Py_NewRef(asend));
    Py_XSETREF(ArecvForeign, Py_NewRef(arecv));
    Py_RETURN_NONE;
}

/* _setup_trio(task, checkpoint_if_cancelled, cancel_shielded_checkpoint): the
 * trio task kind and trio's two halves of a checkpoint, given by sched/trio.py
 * (see Op). */
static PyObject *
channel_setup_trio(PyObject *module, PyObject *args)
{
    PyObject *task, *cic, *csc;
    if (!PyArg_UnpackTuple(args, "_setup_trio", 3, 3, &task, &cic, &csc)) {
        return NULL;
    }
    Py_XSETREF(TrioTaskObj, Py_NewRef(task));
    Py_XSETREF(CancelShieldedCheckpoint, Py_NewRef(csc));
    Py_XSETREF(CheckpointIfCancelled, Py_NewRef(cic));
    Py_RETURN_NONE;
}

static PyMethodDef channel_functions[] = {
    {"_setup", channel_setup, METH_VARARGS,
     "Give the native channel the exception classes, statistics class and marks of channel.py."},
    {"_setup_green", channel_setup_green, METH_VARARGS,
     "Give the native channel the slow paths of greenlets and using_task() schedulers."},
    {"_setup_trio", channel_setup_trio, METH_VARARGS,
     "Give the native channel trio's checkpoint_if_cancelled and cancel_shielded_checkpoint."},
    {NULL},
};

int
ioserver_init_channel(PyObject *module)
{
    str_unpark = PyUnicode_InternFromString("unpark");
    str_park = PyUnicode_InternFromString("park");
    str_try_send = PyUnicode_InternFromString("try_send");
    if (str_unpark == NULL || str_park == NULL || str_try_send == NULL) {
        return -1;
    }
    ChannelType = (PyTypeObject *)PyType_FromModuleAndSpec(module, &channel_spec, NULL);
    if (ChannelType == NULL) {
        return -1;
    }
    OpType = (PyTypeObject *)PyType_FromModuleAndSpec(module, &op_spec, NULL);
    if (OpType == NULL) {
        return -1;
    }
    if (PyModule_AddObjectRef(module, "_Op", (PyObject *)OpType) < 0
        || PyModule_AddObjectRef(module, "Channel", (PyObject *)ChannelType) < 0
        || PyModule_AddFunctions(module, channel_functions) < 0) {
        return -1;
    }
    return 0;
}
