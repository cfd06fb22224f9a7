/* The native driver input path: Driver.feed and Driver.deliver (drivers/base.py)
 * for the common case, in C.
 *
 * Every read of every port runs data_received -> feed -> deliver -> try_send on
 * the I/O thread: three Python frames and some forty bytecodes per message,
 * with the GIL held, while the threads that receive wait for it. These are the
 * same two methods, written against the Driver's and the Port's slots at fixed
 * offsets (read once, at setup, from their member descriptors: a subclass keeps
 * its bases' slot offsets). What is not the common case calls the Python
 * methods the reference uses (_feed_frames, _hold, _flush, _wait_for_room,
 * _inbox_gone, _spend), so every decision stays written once in Python and the
 * pure core runs exactly that.
 *
 * setup_driver(Driver, Port, NO_ONE, control_types, make_data, Full, ChannelClosed,
 *              Watchdog)
 * returns {"feed", "deliver", "data_received"}: method descriptors of Driver,
 * which base.py installs in place of the Python methods (data_received on
 * StreamDriver, stream.py).
 *
 * data_received is a loop callback, so it is a section of the I/O thread's
 * watchdog (watchdog.py's loop_callback, in C): the driver's _watchdog slot
 * read once, the start written into the Watchdog's _since slot as a float (one
 * clock read), cleared at the end; a section already running (nested) is left
 * alone. feed and deliver are not loop entry points (the drivers' callbacks
 * call them, inside their sections) and mark nothing.
 */
#include "native.h"

#include <math.h>
#include <structmember.h>
#include <time.h>

enum {
    D_FINISHED, D_BYTES_IN, D_RAW, D_PORT, D_CLOSED_QUEUED, D_MESSAGES_IN, D_ACTIVE,
    D_WAITING_ROOM, D_NFIELDS
};
static const char *driver_fields[D_NFIELDS] = {
    "_finished", "bytes_in", "_raw", "_port", "_closed_queued", "messages_in", "_active",
    "_waiting_room",
};
static Py_ssize_t doff[D_NFIELDS];
static Py_ssize_t off_pending, off_inbox;  /* Port's slots */
static Py_ssize_t off_watchdog;            /* Driver's _watchdog slot */
static Py_ssize_t off_since, off_parked, off_stuck;  /* Watchdog's slots */
static PyTypeObject *WatchdogType;         /* owned */
static PyObject *ZeroFloat;                /* owned: 0.0, "no section running" */
static PyObject *s_unpark, *s_end_stall;

static PyTypeObject *DriverType;  /* owned */
static PyTypeObject *PortType;    /* owned */
static PyObject *NoOne;           /* owned: channel.NO_ONE */
static PyObject *ControlTypes;    /* owned: a tuple of classes */
static PyObject *MakeData;        /* owned: messages.make_data */
static PyObject *FullExc, *ClosedExc;  /* owned */
static PyObject *FeedDescr, *DeliverDescr;  /* owned: the methods setup_driver made */
static PyObject *s_feed, *s_deliver, *s_fail, *s_py_deliver, *s_feed_frames, *s_hold, *s_flush, *s_wait_for_room, *s_inbox_gone, *s_spend,
    *s_try_send, *s_server, *s_loop;

/* The port of a driver (a new reference), Py_None's new reference when it was
 * collected, or NULL with an exception. */
static PyObject *
driver_port(PyObject *self)
{
    PyObject *ref = ioserver_slot_get(self, doff[D_PORT], "_port");
    if (ref == NULL) {
        return NULL;
    }
    if (!PyWeakref_Check(ref)) {
        return PyObject_CallNoArgs(ref);
    }
#if PY_VERSION_HEX >= 0x030D0000
    PyObject *port;
    if (PyWeakref_GetRef(ref, &port) < 0) {
        return NULL;
    }
    return port == NULL ? Py_NewRef(Py_None) : port;
#else
    return Py_NewRef(PyWeakref_GetObject(ref));
#endif
}

static PyObject *
call_method1(PyObject *self, PyObject *name, PyObject *arg)
{
    return PyObject_CallMethodOneArg(self, name, arg);
}

/* Try to put message in inbox: 1 sent, 0 full, -1 closed, -2 error. */
static int
inbox_try_send(PyObject *inbox, PyObject *message)
{
    if (ioserver_channel_kind(inbox) == 2) {
        return ioserver_channel_poll(inbox, message, NULL);
    }
    PyObject *r = PyObject_CallMethodOneArg(inbox, s_try_send, message);
    if (r != NULL) {
        Py_DECREF(r);
        return 1;
    }
    if (PyErr_ExceptionMatches(FullExc)) {
        PyErr_Clear();
        return 0;
    }
    if (PyErr_ExceptionMatches(ClosedExc)) {
        PyErr_Clear();
        return -1;
    }
    return -2;
}

/* Whether `pending` (a port's undelivered messages) holds nothing: 1, 0, -1. */
static int
pending_empty(PyObject *pending)
{
    if (pending == NoOne) {
        return 1;
    }
    Py_ssize_t n = PyObject_Length(pending);
    return n < 0 ? -1 : n == 0;
}

/* The active budget as a number (inf: unlimited); NAN with an exception. */
static double
active_budget(PyObject *active)
{
    if (PyFloat_CheckExact(active)) {
        return PyFloat_AS_DOUBLE(active);
    }
    double d = PyFloat_AsDouble(active);
    return d == -1.0 && PyErr_Occurred() ? NAN : d;
}

static PyObject *
call_done(PyObject *r)
{
    if (r == NULL) {
        return NULL;
    }
    Py_DECREF(r);
    Py_RETURN_NONE;
}

/* Driver.deliver(message): see base.py's deliver, which this follows line by line. */
static PyObject *
driver_deliver(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 1) {
        PyErr_SetString(PyExc_TypeError, "deliver(message)");
        return NULL;
    }
    PyObject *message = args[0];
    PyObject *closed_queued = ioserver_slot_get(self, doff[D_CLOSED_QUEUED], "_closed_queued");
    if (closed_queued == NULL) {
        return NULL;
    }
    int t = PyObject_IsTrue(closed_queued);
    if (t != 0) {
        return t < 0 ? NULL : Py_NewRef(Py_None);  /* nothing may follow Closed */
    }
    PyObject *port = driver_port(self);
    if (port == NULL) {
        return NULL;
    }
    if (port == Py_None) {
        Py_DECREF(port);
        Py_RETURN_NONE;  /* collected: nobody can receive it */
    }
    if (!PyObject_TypeCheck(port, PortType)) {
        /* Not a Port: its fields are not at our offsets; the reference handles it. */
        Py_DECREF(port);
        return call_done(call_method1(self, s_py_deliver, message));
    }
    PyObject *result = NULL;
    if (ioserver_slot_add(self, doff[D_MESSAGES_IN], "messages_in", 1) < 0) {
        goto done;
    }
    PyObject *pending = ioserver_slot_get(port, off_pending, "_pending");
    PyObject *active = ioserver_slot_get(self, doff[D_ACTIVE], "_active");
    PyObject *waiting = ioserver_slot_get(self, doff[D_WAITING_ROOM], "_waiting_room");
    if (pending == NULL || active == NULL || waiting == NULL) {
        goto done;
    }
    int empty = pending_empty(pending);
    double budget = active_budget(active);
    int waiting_room = PyObject_IsTrue(waiting);
    if (empty < 0 || isnan(budget) || waiting_room < 0) {
        goto done;
    }
    if (!(empty && budget > 0 && !waiting_room)) {
        PyObject *r = call_method1(self, s_hold, message);
        if (r == NULL) {
            goto done;
        }
        Py_DECREF(r);
        result = call_done(PyObject_CallMethodNoArgs(self, s_flush));
        goto done;
    }
    PyObject *inbox = ioserver_slot_get(port, off_inbox, "_inbox");
    if (inbox == NULL) {
        goto done;
    }
    Py_INCREF(inbox);  /* try_send may run Python code (a subclass, a wakeup) */
    int sent = inbox_try_send(inbox, message);
    Py_DECREF(inbox);
    if (sent == -2) {
        goto done;
    }
    if (sent == 0) {
        PyObject *r = call_method1(self, s_hold, message);
        if (r == NULL) {
            goto done;
        }
        Py_DECREF(r);
        result = call_done(PyObject_CallMethodNoArgs(self, s_wait_for_room));
        goto done;
    }
    if (sent == -1) {
        result = call_done(PyObject_CallMethodNoArgs(self, s_inbox_gone));
        goto done;
    }
    int control = PyObject_IsInstance(message, ControlTypes);
    if (control < 0) {
        goto done;
    }
    if (!control && !isinf(budget)) {
        /* A counted budget: _spend decides about Passive (an infinite one never ends). */
        result = call_done(PyObject_CallMethodNoArgs(self, s_spend));
        goto done;
    }
    result = Py_NewRef(Py_None);
done:
    Py_DECREF(port);
    return result;
}

/* Whether self's class still has our method `descr` as `name` (a subclass, or a
 * test, may have put another one there: then that one is called, as Python would). */
static inline int
own_method(PyObject *self, PyObject *name, PyObject *descr)
{
    return _PyType_Lookup(Py_TYPE(self), name) == descr;  /* borrowed; the type's cache */
}

/* Driver.feed(data): bytes arrived; raw ports deliver them as one Data. */
static PyObject *
driver_feed(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 1) {
        PyErr_SetString(PyExc_TypeError, "feed(data)");
        return NULL;
    }
    PyObject *data = args[0];
    PyObject *finished = ioserver_slot_get(self, doff[D_FINISHED], "_finished");
    if (finished == NULL) {
        return NULL;
    }
    int t = PyObject_IsTrue(finished);
    if (t != 0) {
        return t < 0 ? NULL : Py_NewRef(Py_None);
    }
    Py_ssize_t n = PyObject_Length(data);
    if (n < 0 || ioserver_slot_add(self, doff[D_BYTES_IN], "bytes_in", n) < 0) {
        return NULL;
    }
    PyObject *raw = ioserver_slot_get(self, doff[D_RAW], "_raw");
    if (raw == NULL) {
        return NULL;
    }
    int is_raw = PyObject_IsTrue(raw);
    if (is_raw < 0) {
        return NULL;
    }
    if (!is_raw) {
        return call_done(call_method1(self, s_feed_frames, data));
    }
    PyObject *port = driver_port(self);
    if (port == NULL) {
        return NULL;
    }
    if (port == Py_None) {
        Py_DECREF(port);
        Py_RETURN_NONE;
    }
    PyObject *pair[2] = {port, data};
    PyObject *message = PyObject_Vectorcall(MakeData, pair, 2, NULL);
    Py_DECREF(port);
    if (message == NULL) {
        return NULL;
    }
    PyObject *r = own_method(self, s_deliver, DeliverDescr)
                      ? driver_deliver(self, &message, 1)
                      : PyObject_CallMethodOneArg(self, s_deliver, message);
    Py_DECREF(message);
    return call_done(r);
}

/* The threads this read wakes wake at the end of the loop's batch of reads,
 * once (sched.c's deferred unparks): the loop is driver.server.loop. An error
 * only means they wake at once. */
static void
defer_unparks(PyObject *driver)
{
    PyObject *server = PyObject_GetAttr(driver, s_server);
    PyObject *loop = server == NULL ? NULL : PyObject_GetAttr(server, s_loop);
    if (loop == NULL || ioserver_defer_unparks(loop) < 0) {
        PyErr_Clear();
    }
    Py_XDECREF(loop);
    Py_XDECREF(server);
}

/* time.monotonic(): CLOCK_MONOTONIC, as CPython reads it on Linux. */
static inline double
monotonic_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* A float slot that holds a nonzero value (the section's start, a stall). */
static inline int
slot_nonzero(PyObject *obj, Py_ssize_t off)
{
    PyObject *v = IOSERVER_SLOT(obj, off);
    return v != NULL && (!PyFloat_CheckExact(v) || PyFloat_AS_DOUBLE(v) != 0.0);
}

/* Enter a watchdog section for a loop callback of driver `self`: the watchdog
 * (a new reference) if this is the outer section, else NULL (no watchdog, or
 * inside another section). Never raises: a failure only skips the section. */
static PyObject *
section_enter(PyObject *self)
{
    PyObject *wd = IOSERVER_SLOT(self, off_watchdog);
    if (wd == NULL || wd == Py_None || !PyObject_TypeCheck(wd, WatchdogType)
        || slot_nonzero(wd, off_since)) {
        return NULL;
    }
    PyObject *start = PyFloat_FromDouble(monotonic_now());
    if (start == NULL) {
        PyErr_Clear();
        return NULL;
    }
    ioserver_slot_set(wd, off_since, start);  /* the old value is a float: freeing it runs nothing */
    Py_INCREF(wd);
    if (IOSERVER_SLOT(wd, off_parked) == Py_True) {  /* first section after an idle period */
        PyObject *r = PyObject_CallMethodNoArgs(wd, s_unpark);
        if (r == NULL) {
            PyErr_WriteUnraisable(wd);
        }
        Py_XDECREF(r);
    }
    return wd;
}

/* Leave the outer section (steals wd); keeps the exception in flight, if any. */
static void
section_leave(PyObject *wd)
{
    ioserver_slot_set(wd, off_since, Py_NewRef(ZeroFloat));
    if (slot_nonzero(wd, off_stuck)) {  /* reported stuck: time it exactly */
        ioserver_SavedError saved;
        ioserver_err_save(&saved);
        PyObject *end = PyFloat_FromDouble(monotonic_now());
        PyObject *r = end == NULL ? NULL : PyObject_CallMethodOneArg(wd, s_end_stall, end);
        Py_XDECREF(end);
        if (r == NULL) {
            PyErr_WriteUnraisable(wd);
        }
        Py_XDECREF(r);
        ioserver_err_restore(&saved);
    }
    Py_DECREF(wd);
}

static PyObject *data_received_body(PyObject *self, PyObject *const *args, Py_ssize_t nargs);

/* StreamDriver.data_received(data): feed, and an exception fails the port
 * (stream.py's data_received, for the transports that call it); a watchdog
 * section (see the top of this file). */
static PyObject *
driver_data_received(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 1) {
        PyErr_SetString(PyExc_TypeError, "data_received(data)");
        return NULL;
    }
    PyObject *wd = section_enter(self);
    PyObject *r = data_received_body(self, args, nargs);
    if (wd != NULL) {
        section_leave(wd);
    }
    return r;
}

static PyObject *
data_received_body(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (!ioserver_deferring_unparks()) {
        defer_unparks(self);
    }
    PyObject *r = own_method(self, s_feed, FeedDescr)
                      ? driver_feed(self, args, nargs)
                      : PyObject_CallMethodOneArg(self, s_feed, args[0]);
    if (r != NULL || !PyErr_ExceptionMatches(PyExc_Exception)) {
        return r;
    }
    PyObject *exc = ioserver_err_take();
    r = call_method1(self, s_fail, exc);
    Py_DECREF(exc);
    return call_done(r);
}

static PyMethodDef data_received_def = {
    "data_received", (PyCFunction)(void (*)(void))driver_data_received, METH_FASTCALL,
    "The transport read data: feed it; an exception fails the port (native)."};
static PyMethodDef feed_def = {
    "feed", (PyCFunction)(void (*)(void))driver_feed, METH_FASTCALL,
    "Bytes arrived: frame them and deliver each frame as Data (native)."};
static PyMethodDef deliver_def = {
    "deliver", (PyCFunction)(void (*)(void))driver_deliver, METH_FASTCALL,
    "Queue message for the inbox and deliver what the mode and room allow (native)."};

static int
intern(PyObject **slot, const char *s)
{
    *slot = PyUnicode_InternFromString(s);
    return *slot == NULL ? -1 : 0;
}

static PyObject *
setup_driver(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 8 || !PyType_Check(args[0]) || !PyType_Check(args[1])
        || !PyTuple_Check(args[3]) || !PyType_Check(args[7])) {
        PyErr_SetString(PyExc_TypeError,
                        "setup_driver(Driver, Port, NO_ONE, control_types, make_data, Full, "
                        "ChannelClosed, Watchdog)");
        return NULL;
    }
    if (DriverType != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "setup_driver: already set up");
        return NULL;
    }
    PyTypeObject *driver = (PyTypeObject *)args[0];
    PyTypeObject *port = (PyTypeObject *)args[1];
    if (ioserver_slot_offsets(driver, driver_fields, doff, D_NFIELDS) < 0) {
        return NULL;
    }
    PyObject *name = PyUnicode_FromString("_pending");
    off_pending = name == NULL ? -1 : ioserver_slot_offset(port, name);
    Py_XDECREF(name);
    name = PyUnicode_FromString("_inbox");
    off_inbox = name == NULL || off_pending < 0 ? -1 : ioserver_slot_offset(port, name);
    Py_XDECREF(name);
    if (off_pending < 0 || off_inbox < 0) {
        return NULL;
    }
    PyTypeObject *watchdog = (PyTypeObject *)args[7];
    struct {
        PyTypeObject *cls;
        const char *name;
        Py_ssize_t *off;
    } wslots[] = {
        {driver, "_watchdog", &off_watchdog},
        {watchdog, "_since", &off_since},
        {watchdog, "_parked", &off_parked},
        {watchdog, "_stuck", &off_stuck},
    };
    for (size_t i = 0; i < sizeof(wslots) / sizeof(wslots[0]); i++) {
        name = PyUnicode_FromString(wslots[i].name);
        *wslots[i].off = name == NULL ? -1 : ioserver_slot_offset(wslots[i].cls, name);
        Py_XDECREF(name);
        if (*wslots[i].off < 0) {
            return NULL;
        }
    }
    if (intern(&s_unpark, "_unpark") < 0 || intern(&s_end_stall, "_end_stall") < 0) {
        return NULL;
    }
    ZeroFloat = PyFloat_FromDouble(0.0);
    if (ZeroFloat == NULL) {
        return NULL;
    }
    if (intern(&s_feed, "feed") < 0 || intern(&s_deliver, "deliver") < 0
        || intern(&s_fail, "fail") < 0 || intern(&s_py_deliver, "_py_deliver") < 0 || intern(&s_feed_frames, "_feed_frames") < 0 || intern(&s_hold, "_hold") < 0
        || intern(&s_flush, "_flush") < 0 || intern(&s_wait_for_room, "_wait_for_room") < 0
        || intern(&s_inbox_gone, "_inbox_gone") < 0 || intern(&s_spend, "_spend") < 0
        || intern(&s_try_send, "try_send") < 0 || intern(&s_server, "server") < 0
        || intern(&s_loop, "loop") < 0) {
        return NULL;
    }
    PyObject *feed = PyDescr_NewMethod(driver, &feed_def);
    PyObject *deliver = PyDescr_NewMethod(driver, &deliver_def);
    PyObject *received = PyDescr_NewMethod(driver, &data_received_def);
    PyObject *methods = feed && deliver && received
                            ? Py_BuildValue("{sOsOsO}", "feed", feed, "deliver", deliver,
                                            "data_received", received)
                            : NULL;
    Py_XDECREF(received);
    if (methods == NULL) {
        Py_XDECREF(feed);
        Py_XDECREF(deliver);
        return NULL;
    }
    FeedDescr = feed;  /* our references: compared with what the classes hold */
    DeliverDescr = deliver;
    DriverType = (PyTypeObject *)Py_NewRef(driver);
    PortType = (PyTypeObject *)Py_NewRef(port);
    NoOne = Py_NewRef(args[2]);
    ControlTypes = Py_NewRef(args[3]);
    MakeData = Py_NewRef(args[4]);
    FullExc = Py_NewRef(args[5]);
    ClosedExc = Py_NewRef(args[6]);
    WatchdogType = (PyTypeObject *)Py_NewRef(watchdog);
    return methods;
}

static PyMethodDef deliver_functions[] = {
    {"setup_driver", (PyCFunction)(void (*)(void))setup_driver, METH_FASTCALL,
     "setup_driver(Driver, Port, NO_ONE, control_types, make_data, Full, ChannelClosed, "
     "Watchdog) "
     "-> {'feed': ..., 'deliver': ...}: Driver's input methods, native."},
    {NULL},
};

int
ioserver_init_deliver(PyObject *module)
{
    return PyModule_AddFunctions(module, deliver_functions);
}
