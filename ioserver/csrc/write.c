/* The native write path on the loop side: Port._write_on_loop (port.py) and,
 * for a stream port, Driver.write and StreamDriver._write (drivers/) in C.
 *
 * Every Port.send of bytes becomes one request, _write_on_loop(port, data, n),
 * run by the request queue's drain on the I/O thread: in Python that is four
 * frames (the write, the driver's write, the encoder, the stream's _write)
 * around one write(2), with the GIL held while the threads that feed the port
 * wait for it. Here the common case -- bytes to a stream port in raw mode whose
 * classes did not replace those methods -- is one C call: count the bytes, write
 * straight to the socket with the GIL released while uvloop's transport buffers
 * nothing, else hand the rest to transport.write, then count the request as
 * processed and wake parked writers. Every other case calls the Python methods,
 * which stay the reference (the pure core runs only them).
 *
 * setup_writer(Port, Driver, StreamDriver, RawEncoder) returns
 * {"_write_on_loop": descriptor}; stream.py installs it on Port, keeping the
 * Python one as _py_write_on_loop.
 */
#include "native.h"

#include <errno.h>
#include <unistd.h>

enum { W_DRIVER, W_PROCESSED, W_WRITERS, W_PORT_FIELDS };
static const char *port_fields[W_PORT_FIELDS] = {"_driver", "_processed", "_writers"};
enum { W_CLOSED_QUEUED, W_BYTES_OUT, W_ENCODER, W_TRANSPORT, W_FD, W_DRIVER_FIELDS };
static const char *driver_fields[W_DRIVER_FIELDS] = {
    "_closed_queued", "bytes_out", "encoder", "transport", "_fd",
};
static Py_ssize_t port_off[W_PORT_FIELDS], driver_off[W_DRIVER_FIELDS];

static PyTypeObject *StreamDriverType;  /* owned */
static PyTypeObject *RawEncoderType;    /* owned */
static PyObject *DriverWrite;           /* owned: Driver.write, the function */
static PyObject *StreamWrite;           /* owned: StreamDriver._write, the function */
static PyObject *s_write, *s_write_private, *s_fail, *s_wake_writers, *s_get_write_buffer_size,
    *s_is_closing;

/* Whether `driver` writes bytes the way this file does: a StreamDriver whose
 * class kept write and _write, in raw mode (encoder exactly RawEncoder). */
static int
fast_stream(PyObject *driver)
{
    PyTypeObject *type = Py_TYPE(driver);
    if (!PyType_IsSubtype(type, StreamDriverType)
        || _PyType_Lookup(type, s_write) != DriverWrite
        || _PyType_Lookup(type, s_write_private) != StreamWrite) {
        return 0;
    }
    PyObject *encoder = IOSERVER_SLOT(driver, driver_off[W_ENCODER]);
    return encoder != NULL && Py_IS_TYPE(encoder, RawEncoderType);
}

/* A method call's result as 0 (dropped), or -1. */
static inline int
done(PyObject *r)
{
    if (r == NULL) {
        return -1;
    }
    Py_DECREF(r);
    return 0;
}

/* transport.<name>() as a C int truth value / size: >= 0, or -1 with an exception. */
static Py_ssize_t
call_size(PyObject *transport, PyObject *name)
{
    PyObject *r = PyObject_CallMethodNoArgs(transport, name);
    if (r == NULL) {
        return -1;
    }
    Py_ssize_t v = PyBool_Check(r) ? (r == Py_True) : PyLong_AsSsize_t(r);
    Py_DECREF(r);
    return v;
}

/* StreamDriver._write(data) for bytes: straight to the fd while the transport
 * holds nothing unsent (order is kept), else through transport.write. */
static int
stream_write(PyObject *driver, PyObject *transport, PyObject *data)
{
    PyObject *fd_obj = IOSERVER_SLOT(driver, driver_off[W_FD]);
    long fd = fd_obj != NULL && PyLong_CheckExact(fd_obj) ? PyLong_AsLong(fd_obj) : -1;
    if (fd == -1 && PyErr_Occurred()) {
        return -1;
    }
    Py_ssize_t len = PyBytes_GET_SIZE(data);
    Py_ssize_t sent = 0;
    if (fd >= 0 && len > 0) {
        Py_ssize_t buffered = call_size(transport, s_get_write_buffer_size);
        if (buffered < 0) {
            return -1;
        }
        Py_ssize_t closing = buffered ? 1 : call_size(transport, s_is_closing);
        if (closing < 0) {
            return -1;
        }
        if (!buffered && !closing) {
            /* A closing transport may have closed its fd (whose number can be
             * reused at once): it only ever gets transport.write. */
            const char *buf = PyBytes_AS_STRING(data);  /* immutable: safe without the GIL */
            ssize_t n;
            Py_BEGIN_ALLOW_THREADS
            n = write((int)fd, buf, (size_t)len);
            Py_END_ALLOW_THREADS
            if (n == len) {
                return 0;
            }
            sent = n > 0 ? n : 0;  /* EAGAIN, or an error the transport meets and reports too */
        }
    }
    PyObject *rest = sent ? PyBytes_FromStringAndSize(PyBytes_AS_STRING(data) + sent, len - sent)
                          : Py_NewRef(data);
    if (rest == NULL) {
        return -1;
    }
    int rc = done(PyObject_CallMethodOneArg(transport, s_write, rest));
    Py_DECREF(rest);
    return rc;
}

/* Driver.write(data) for a fast_stream driver: count, write; an exception fails
 * the port (the driver's fail), as the Python one. */
static int
driver_write(PyObject *driver, PyObject *data)
{
    PyObject *queued = IOSERVER_SLOT(driver, driver_off[W_CLOSED_QUEUED]);
    if (queued == NULL) {
        PyErr_SetString(PyExc_AttributeError, "_closed_queued");
        return -1;
    }
    int q = PyObject_IsTrue(queued);
    if (q != 0) {
        return q < 0 ? -1 : 0;
    }
    int rc = ioserver_slot_add(driver, driver_off[W_BYTES_OUT], "bytes_out", PyBytes_GET_SIZE(data));
    if (rc == 0) {
        PyObject *transport = IOSERVER_SLOT(driver, driver_off[W_TRANSPORT]);
        if (transport != NULL && transport != Py_None) {
            Py_INCREF(transport);
            rc = stream_write(driver, transport, data);
            Py_DECREF(transport);
        }
    }
    if (rc == 0 || !PyErr_ExceptionMatches(PyExc_Exception)) {
        return rc;
    }
    PyObject *exc = ioserver_err_take();
    rc = exc == NULL ? -1 : done(PyObject_CallMethodOneArg(driver, s_fail, exc));
    Py_XDECREF(exc);
    return rc;
}

/* Port._write_on_loop(data, n): hand a write to the driver, then update the accounting. */
static PyObject *
port_write_on_loop(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_write_on_loop(data, n)");
        return NULL;
    }
    PyObject *data = args[0];
    Py_ssize_t n = PyLong_AsSsize_t(args[1]);
    if (n == -1 && PyErr_Occurred()) {
        return NULL;
    }
    PyObject *driver = IOSERVER_SLOT(self, port_off[W_DRIVER]);
    if (driver == NULL) {
        PyErr_SetString(PyExc_AttributeError, "_driver");
        return NULL;
    }
    if (driver != Py_None) {
        Py_INCREF(driver);
        int rc = PyBytes_CheckExact(data) && fast_stream(driver)
                     ? driver_write(driver, data)
                     : done(PyObject_CallMethodOneArg(driver, s_write, data));
        Py_DECREF(driver);
        if (rc < 0) {
            return NULL;
        }
    }
    if (ioserver_slot_add(self, port_off[W_PROCESSED], "_processed", n) < 0) {
        return NULL;
    }
    PyObject *writers = IOSERVER_SLOT(self, port_off[W_WRITERS]);
    int any = writers == NULL ? 0 : PyObject_IsTrue(writers);
    if (any < 0) {
        return NULL;
    }
    if (any) {
        return PyObject_CallMethodNoArgs(self, s_wake_writers);
    }
    Py_RETURN_NONE;
}

static PyMethodDef write_on_loop_def = {
    "_write_on_loop", (PyCFunction)(void (*)(void))port_write_on_loop, METH_FASTCALL,
    "Loop thread: hand a write to the driver, then update the accounting (native)."};

static PyObject *
setup_writer(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyType_Check(args[0]) || !PyType_Check(args[1]) || !PyType_Check(args[2])
        || !PyType_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, "setup_writer(Port, Driver, StreamDriver, RawEncoder)");
        return NULL;
    }
    if (StreamDriverType != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "setup_writer: already set up");
        return NULL;
    }
    PyTypeObject *port = (PyTypeObject *)args[0];
    PyTypeObject *driver = (PyTypeObject *)args[1];
    PyTypeObject *stream = (PyTypeObject *)args[2];
    if (ioserver_slot_offsets(port, port_fields, port_off, W_PORT_FIELDS) < 0
        || ioserver_slot_offsets(stream, driver_fields, driver_off, W_DRIVER_FIELDS) < 0) {
        return NULL;
    }
    s_write = PyUnicode_InternFromString("write");
    s_write_private = PyUnicode_InternFromString("_write");
    s_fail = PyUnicode_InternFromString("fail");
    s_wake_writers = PyUnicode_InternFromString("_wake_writers");
    s_get_write_buffer_size = PyUnicode_InternFromString("get_write_buffer_size");
    s_is_closing = PyUnicode_InternFromString("is_closing");
    if (s_write == NULL || s_write_private == NULL || s_fail == NULL || s_wake_writers == NULL
        || s_get_write_buffer_size == NULL || s_is_closing == NULL) {
        return NULL;
    }
    PyObject *write = _PyType_Lookup(driver, s_write);              /* borrowed */
    PyObject *private_write = _PyType_Lookup(stream, s_write_private);  /* borrowed */
    if (write == NULL || private_write == NULL || !PyFunction_Check(write)
        || !PyFunction_Check(private_write)) {
        PyErr_SetString(PyExc_TypeError,
                        "setup_writer: Driver.write and StreamDriver._write must be functions");
        return NULL;
    }
    PyObject *descr = PyDescr_NewMethod(port, &write_on_loop_def);
    PyObject *methods = descr == NULL ? NULL
                                      : Py_BuildValue("{sO}", "_write_on_loop", descr);
    Py_XDECREF(descr);
    if (methods == NULL) {
        return NULL;
    }
    DriverWrite = Py_NewRef(write);
    StreamWrite = Py_NewRef(private_write);
    StreamDriverType = (PyTypeObject *)Py_NewRef(stream);
    RawEncoderType = (PyTypeObject *)Py_NewRef(args[3]);
    return methods;
}

static PyMethodDef write_functions[] = {
    {"setup_writer", (PyCFunction)(void (*)(void))setup_writer, METH_FASTCALL,
     "setup_writer(Port, Driver, StreamDriver, RawEncoder) -> {'_write_on_loop': ...}: "
     "the loop side of Port.send, native."},
    {NULL},
};

int
ioserver_init_write(PyObject *module)
{
    return PyModule_AddFunctions(module, write_functions);
}
