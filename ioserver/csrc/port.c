/* The native send path: Port.send (port.py) for the common case, and
 * Port._queue_write, in C.
 *
 * A write is fire-and-forget: count its bytes as submitted, queue
 * port._write_on_loop(data, n) for the loop thread. The pure core does the two
 * under the port's _send_lock (the count is a read-modify-write). Here they are
 * one C call under the GIL, so no lock: the count's read-modify-write runs no
 * Python code, and the request goes straight into the request queue
 * (csrc/queue.c) without a bound method. `send`'s common case is bytes on an
 * open port that is not busy; anything else (another type, a busy or closed
 * port, keyword arguments) runs the Python send, which port.py keeps as
 * `_py_send` and which counts and queues through this `_queue_write`.
 *
 * setup_port(Port) returns {"send": descriptor, "_queue_write": descriptor}.
 */
#include "native.h"

#include <structmember.h>

enum {
    P_CLOSED, P_TRANSPORT_BUSY, P_SUBMITTED, P_PROCESSED, P_HIGH_WATER, P_WAKEUP, P_INBOX,
    P_NFIELDS
};
static const char *port_fields[P_NFIELDS] = {
    "_closed", "_transport_busy", "_submitted", "_processed", "high_water", "_requests",
    "_inbox",
};
static Py_ssize_t poff[P_NFIELDS];
static int ready;  /* setup_port ran */
static PyObject *s_py_send, *s_write_on_loop, *s_submit;

#define PSLOT(obj, i) (*(PyObject **)((char *)(obj) + poff[i]))

/* An int slot's value, or -1 with an exception (also when unset). */
static Py_ssize_t
int_slot(PyObject *self, int i)
{
    PyObject *v = PSLOT(self, i);
    if (v == NULL) {
        PyErr_Format(PyExc_AttributeError, "'%s' object has no attribute '%s'",
                     Py_TYPE(self)->tp_name, port_fields[i]);
        return -1;
    }
    return PyLong_AsSsize_t(v);
}

/* The port's _write_on_loop as its class has it (borrowed), if calling it with
 * the port as first argument is the method call: a function (port.py's), or a
 * method descriptor (write.c's, which stream.py installs); else NULL. */
static inline PyObject *
write_on_loop(PyObject *self)
{
    PyObject *w = _PyType_Lookup(Py_TYPE(self), s_write_on_loop);  /* the type's cache */
    return w != NULL && (PyFunction_Check(w) || Py_IS_TYPE(w, &PyMethodDescr_Type)) ? w : NULL;
}

/* Count n more bytes submitted and queue write(data, n) on the loop: 0, or -1
 * with an exception (ServerStopped after the server stopped; the count stays, as
 * in the Python version). */
static int
queue_write(PyObject *self, PyObject *write, PyObject *data, Py_ssize_t n)
{
    PyObject *count = PyLong_FromSsize_t(n);
    if (count == NULL) {
        return -1;
    }
    PyObject *submitted = PSLOT(self, P_SUBMITTED);
    PyObject *sum = submitted == NULL ? NULL : PyNumber_Add(submitted, count);
    if (sum == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_AttributeError, "_submitted");
        }
        Py_DECREF(count);
        return -1;
    }
    PyObject *old = PSLOT(self, P_SUBMITTED);
    PSLOT(self, P_SUBMITTED) = sum;
    Py_DECREF(old);  /* an int: frees nothing that runs code */
    PyObject *wakeup = PSLOT(self, P_WAKEUP);
    /* Messages still in the port's inbox: a thread answering them goes on
     * sending before it blocks (queue.c keeps the GIL for the pipe byte). */
    PyObject *inbox = PSLOT(self, P_INBOX);
    int more = inbox != NULL && ioserver_channel_buffered(inbox) > 0;
    int rc;
    if (wakeup != NULL && ioserver_is_request_queue(wakeup)) {
        PyObject *own = write == NULL ? write_on_loop(self) : NULL;
        if (own != NULL) {
            PyObject *argv[4] = {own, self, data, count};
            rc = ioserver_queue_submit(wakeup, argv, 4, more);
        }
        else {
            PyObject *bound = write != NULL ? Py_NewRef(write)
                                            : PyObject_GetAttr(self, s_write_on_loop);
            PyObject *argv[3] = {bound, data, count};
            rc = bound == NULL ? -1 : ioserver_queue_submit(wakeup, argv, 3, more);
            Py_XDECREF(bound);
        }
    }
    else if (wakeup == NULL) {
        PyErr_SetString(PyExc_AttributeError, "_requests");
        rc = -1;
    }
    else {
        PyObject *bound = write != NULL ? Py_NewRef(write)
                                        : PyObject_GetAttr(self, s_write_on_loop);
        PyObject *r = bound == NULL ? NULL
                                    : PyObject_CallMethodObjArgs(wakeup, s_submit, bound, data,
                                                                 count, NULL);
        Py_XDECREF(bound);
        Py_XDECREF(r);
        rc = r == NULL ? -1 : 0;
    }
    Py_DECREF(count);
    return rc;
}

/* Port._queue_write(write, data, n) */
static PyObject *
port_queue_write(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "_queue_write(write, data, n)");
        return NULL;
    }
    Py_ssize_t n = PyLong_AsSsize_t(args[2]);
    if (n == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (queue_write(self, args[0], args[1], n) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* Port.send(data, *, timeout=None, nowait=False) */
static PyObject *
port_send(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (nargs == 1 && kwnames == NULL && PyBytes_CheckExact(args[0])
        && PSLOT(self, P_CLOSED) == Py_False && PSLOT(self, P_TRANSPORT_BUSY) == Py_False
        && write_on_loop(self) != NULL) {
        Py_ssize_t submitted = int_slot(self, P_SUBMITTED);
        Py_ssize_t processed = submitted < 0 ? -1 : int_slot(self, P_PROCESSED);
        Py_ssize_t high = processed < 0 ? -1 : int_slot(self, P_HIGH_WATER);
        if (high < 0 && PyErr_Occurred()) {
            return NULL;
        }
        if (submitted - processed <= high) {
            if (queue_write(self, NULL, args[0], PyBytes_GET_SIZE(args[0])) < 0) {
                return NULL;
            }
            Py_RETURN_TRUE;
        }
    }
    /* Everything else: the Python send (port.py), with the same arguments. */
    PyObject *argv[8];
    Py_ssize_t total = nargs + (kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames));
    if (total + 1 > 8) {
        PyErr_SetString(PyExc_TypeError, "send() takes data, timeout= and nowait=");
        return NULL;
    }
    argv[0] = self;
    for (Py_ssize_t i = 0; i < total; i++) {
        argv[i + 1] = args[i];
    }
    return PyObject_VectorcallMethod(s_py_send, argv, (size_t)(nargs + 1), kwnames);
}

static PyMethodDef send_def = {
    "send", (PyCFunction)(void (*)(void))port_send, METH_FASTCALL | METH_KEYWORDS,
    "send(data, *, timeout=None, nowait=False) -> bool: queue a write (native; see "
    "port.py's _py_send for the contract)."};
static PyMethodDef queue_write_def = {
    "_queue_write", (PyCFunction)(void (*)(void))port_queue_write, METH_FASTCALL,
    "Count n bytes as submitted and queue write(data, n) for the loop, as one step."};

static PyObject *
setup_port(PyObject *module, PyObject *cls)
{
    if (!PyType_Check(cls)) {
        PyErr_SetString(PyExc_TypeError, "setup_port(Port)");
        return NULL;
    }
    if (ready) {
        PyErr_SetString(PyExc_RuntimeError, "setup_port: already set up");
        return NULL;
    }
    PyTypeObject *type = (PyTypeObject *)cls;
    if (ioserver_slot_offsets(type, port_fields, poff, P_NFIELDS) < 0) {
        return NULL;
    }
    s_py_send = PyUnicode_InternFromString("_py_send");
    s_write_on_loop = PyUnicode_InternFromString("_write_on_loop");
    s_submit = PyUnicode_InternFromString("submit");
    if (s_py_send == NULL || s_write_on_loop == NULL || s_submit == NULL) {
        return NULL;
    }
    PyObject *send = PyDescr_NewMethod(type, &send_def);
    PyObject *queue = PyDescr_NewMethod(type, &queue_write_def);
    PyObject *methods = send && queue ? Py_BuildValue("{sOsO}", "send", send, "_queue_write",
                                                      queue)
                                      : NULL;
    Py_XDECREF(send);
    Py_XDECREF(queue);
    ready = methods != NULL;
    return methods;
}

static PyMethodDef port_functions[] = {
    {"setup_port", (PyCFunction)setup_port, METH_O,
     "setup_port(Port) -> {'send': ..., '_queue_write': ...}: Port's send path, native."},
    {NULL},
};

int
ioserver_init_port(PyObject *module)
{
    return PyModule_AddFunctions(module, port_functions);
}
