/* The native message makers: build a port message (messages.py) without running
 * the dataclass's __init__.
 *
 * The messages are frozen dataclasses with __slots__: their generated __init__
 * sets each field through object.__setattr__ (frozen classes forbid plain
 * assignment), about 0.4 µs per message, paid for every Data, Datagram and Tick
 * a port delivers. A maker knows the class's slot offsets and fills them
 * directly: the same object as the class call gives (same type, same fields,
 * equal, hashed and printed the same), for a tp_alloc and a few increfs.
 *
 * maker = _native.message_maker(cls, ("port", "data")) checks, once, that every
 * name is a plain object slot (a member descriptor of cls or a base) and that
 * cls is a heap type whose instances have nothing else to set up (no __dict__,
 * no __post_init__). maker(*values) with exactly that many positional values
 * builds the message; anything else (keywords, another count) is the class call.
 */
#include "native.h"

#include <structmember.h>

#define MAX_FIELDS 4

typedef struct {
    PyObject_HEAD
    PyTypeObject *cls;     /* owned */
    Py_ssize_t nfields;
    Py_ssize_t offsets[MAX_FIELDS];
    vectorcallfunc vectorcall;
} Maker;

static PyObject *
maker_call(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Maker *self = (Maker *)op;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (kwnames != NULL || nargs != self->nfields) {
        return PyObject_Vectorcall((PyObject *)self->cls, args, nargsf, kwnames);
    }
    PyObject *obj = self->cls->tp_alloc(self->cls, 0);  /* zeroed; tracked by the GC */
    if (obj == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nargs; i++) {
        *(PyObject **)((char *)obj + self->offsets[i]) = Py_NewRef(args[i]);
    }
    return obj;
}

static int
maker_traverse(PyObject *op, visitproc visit, void *arg)
{
    Py_VISIT(((Maker *)op)->cls);
    return 0;
}

static int
maker_clear(PyObject *op)
{
    Py_CLEAR(((Maker *)op)->cls);
    return 0;
}

static void
maker_dealloc(PyObject *op)
{
    PyObject_GC_UnTrack(op);
    maker_clear(op);
    Py_TYPE(op)->tp_free(op);
}

static PyObject *
maker_repr(PyObject *op)
{
    return PyUnicode_FromFormat("<message maker for %s>", ((Maker *)op)->cls->tp_name);
}

static PyTypeObject MakerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ioserver._native.MessageMaker",
    .tp_basicsize = sizeof(Maker),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(Maker, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_traverse = maker_traverse,
    .tp_clear = maker_clear,
    .tp_dealloc = maker_dealloc,
    .tp_repr = maker_repr,
    .tp_doc = "Builds one message class's instances from positional field values.",
};

/* The offset of the object slot `name` of cls (or of a base: a subclass keeps
 * its bases' offsets), or -1 with an exception. */
Py_ssize_t
ioserver_slot_offset(PyTypeObject *cls, PyObject *name)
{
    /* On the class, a slot's member descriptor returns itself. */
    PyObject *descr = PyObject_GetAttr((PyObject *)cls, name);
    if (descr == NULL) {
        return -1;
    }
    Py_ssize_t offset = -1;
    if (Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
        PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
        if (member->type == T_OBJECT_EX && !(member->flags & READONLY)) {
            offset = member->offset;
        }
    }
    Py_DECREF(descr);
    if (offset < 0) {
        PyErr_Format(PyExc_TypeError, "%s.%U is not an object slot", cls->tp_name, name);
    }
    return offset;
}

int
ioserver_slot_offsets(PyTypeObject *cls, const char *const *names, Py_ssize_t *out, int count)
{
    for (int i = 0; i < count; i++) {
        PyObject *name = PyUnicode_FromString(names[i]);
        if (name == NULL) {
            return -1;
        }
        out[i] = ioserver_slot_offset(cls, name);
        Py_DECREF(name);
        if (out[i] < 0) {
            return -1;
        }
    }
    return 0;
}

int
ioserver_slot_add(PyObject *obj, Py_ssize_t off, const char *name, Py_ssize_t n)
{
    PyObject *old = ioserver_slot_get(obj, off, name);
    if (old == NULL) {
        return -1;
    }
    PyObject *delta = PyLong_FromSsize_t(n);
    PyObject *sum = delta == NULL ? NULL : PyNumber_Add(old, delta);
    Py_XDECREF(delta);
    if (sum == NULL) {
        return -1;
    }
    ioserver_slot_set(obj, off, sum);  /* the old value is an int: freeing it runs nothing */
    return 0;
}

static PyObject *
message_maker(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyType_Check(args[0]) || !PyTuple_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "message_maker(cls, field_names: tuple)");
        return NULL;
    }
    PyTypeObject *cls = (PyTypeObject *)args[0];
    PyObject *names = args[1];
    Py_ssize_t n = PyTuple_GET_SIZE(names);
    if (n < 1 || n > MAX_FIELDS) {
        PyErr_Format(PyExc_ValueError, "message_maker: 1 to %d fields", MAX_FIELDS);
        return NULL;
    }
    if (!(cls->tp_flags & Py_TPFLAGS_HEAPTYPE) || cls->tp_dictoffset != 0
        || cls->tp_alloc == NULL) {
        PyErr_Format(PyExc_TypeError, "message_maker: %s must be a class with __slots__ only",
                     cls->tp_name);
        return NULL;
    }
    int has_post_init = PyObject_HasAttrString((PyObject *)cls, "__post_init__");
    if (has_post_init) {
        PyErr_Format(PyExc_TypeError, "message_maker: %s has a __post_init__", cls->tp_name);
        return NULL;
    }
    Maker *self = PyObject_GC_New(Maker, &MakerType);
    if (self == NULL) {
        return NULL;
    }
    self->cls = (PyTypeObject *)Py_NewRef(cls);
    self->nfields = n;
    self->vectorcall = maker_call;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *name = PyTuple_GET_ITEM(names, i);
        if (!PyUnicode_Check(name)) {
            PyErr_SetString(PyExc_TypeError, "message_maker: field names are str");
            Py_DECREF(self);
            return NULL;
        }
        Py_ssize_t offset = ioserver_slot_offset(cls, name);
        if (offset < 0) {
            Py_DECREF(self);
            return NULL;
        }
        self->offsets[i] = offset;
    }
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

static PyMethodDef messages_functions[] = {
    {"message_maker", (PyCFunction)(void (*)(void))message_maker, METH_FASTCALL,
     "message_maker(cls, field_names) -> a fast constructor of a frozen slots dataclass."},
    {NULL},
};

int
ioserver_init_messages(PyObject *module)
{
    if (PyType_Ready(&MakerType) < 0) {
        return -1;
    }
    return PyModule_AddFunctions(module, messages_functions);
}
