/* The native decode budget: framing.DecodeBudget's list_hook/object_hook in C.
 *
 * msgpack's C unpacker calls the hooks as each array or map completes, children
 * before parents: every message a daemon session or a msgpack port decodes costs
 * one hook call per container. The pure core's hooks are two Python frames and a
 * dict keyed by id() each; these are the same rules (framing.py's PyDecodeBudget
 * is the reference) with the depths in a small open-addressing table keyed by
 * the containers' addresses, which are unique while the object being decoded
 * holds them (children stay referenced by their parents until the top completes).
 *
 * Limits and messages are the reference's: elements counts the values of every
 * container (a map's keys and values), depth is one more than the deepest child
 * container; past either bound the hook raises DecodeLimitError (set by
 * framing.py through _set_error).
 */
#include "native.h"

#include <structmember.h>

typedef struct {
    PyObject_HEAD
    Py_ssize_t elements;
    Py_ssize_t max_elements;
    Py_ssize_t max_depth;
    /* depths of the containers completed in the current object: keys are
     * addresses (0 = empty slot), linear probing, at most half full. */
    uintptr_t *keys;
    int *depths;
    Py_ssize_t cap, used;
} Budget;

static PyObject *LimitError;  /* owned: framing.DecodeLimitError */

static int
budget_init(PyObject *op, PyObject *args, PyObject *kwds)
{
    Budget *self = (Budget *)op;
    static char *kwlist[] = {"max_elements", "max_depth", NULL};
    PyObject *max_elements = NULL, *max_depth = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|OO:DecodeBudget", kwlist, &max_elements,
                                     &max_depth)) {
        return -1;
    }
    self->max_elements = 100000;
    self->max_depth = 64;
    if (max_elements != NULL) {
        long long v = PyLong_CheckExact(max_elements) ? PyLong_AsLongLong(max_elements) : 0;
        if (v < 1) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "max_elements=%R must be an int >= 1", max_elements);
            return -1;
        }
        self->max_elements = (Py_ssize_t)(v > PY_SSIZE_T_MAX ? PY_SSIZE_T_MAX : v);
    }
    if (max_depth != NULL) {
        long long v = PyLong_CheckExact(max_depth) ? PyLong_AsLongLong(max_depth) : 0;
        if (v < 1) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "max_depth=%R must be an int >= 1", max_depth);
            return -1;
        }
        self->max_depth = (Py_ssize_t)(v > INT_MAX ? INT_MAX : v);
    }
    self->elements = 0;
    self->used = 0;
    if (self->keys != NULL) {
        memset(self->keys, 0, self->cap * sizeof(uintptr_t));
    }
    return 0;
}

static void
budget_dealloc(PyObject *op)
{
    Budget *self = (Budget *)op;
    PyMem_Free(self->keys);
    PyMem_Free(self->depths);
    Py_TYPE(op)->tp_free(op);
}

static inline Py_ssize_t
slot_of(Budget *self, uintptr_t key)
{
    Py_ssize_t mask = self->cap - 1;
    Py_ssize_t i = (Py_ssize_t)((key >> 4) * 0x9E3779B97F4A7C15ULL >> 20) & mask;
    while (self->keys[i] != 0 && self->keys[i] != key) {
        i = (i + 1) & mask;
    }
    return i;
}

static int
depth_of(Budget *self, PyObject *child)
{
    if (self->used == 0
        || !(PyList_CheckExact(child) || PyDict_CheckExact(child) || PyTuple_CheckExact(child))) {
        return 0;  /* scalars (and containers we never saw) have no depth of their own */
    }
    Py_ssize_t i = slot_of(self, (uintptr_t)child);
    return self->keys[i] == 0 ? 0 : self->depths[i];
}

static int
remember(Budget *self, PyObject *container, int depth)
{
    if (2 * (self->used + 1) > self->cap) {
        Py_ssize_t old_cap = self->cap;
        uintptr_t *old_keys = self->keys;
        int *old_depths = self->depths;
        Py_ssize_t cap = old_cap ? 2 * old_cap : 64;
        uintptr_t *keys = PyMem_Calloc(cap, sizeof(uintptr_t));
        int *depths = PyMem_Malloc(cap * sizeof(int));
        if (keys == NULL || depths == NULL) {
            PyMem_Free(keys);
            PyMem_Free(depths);
            PyErr_NoMemory();
            return -1;
        }
        self->keys = keys;
        self->depths = depths;
        self->cap = cap;
        for (Py_ssize_t j = 0; j < old_cap; j++) {
            if (old_keys[j] != 0) {
                Py_ssize_t i = slot_of(self, old_keys[j]);
                self->keys[i] = old_keys[j];
                self->depths[i] = old_depths[j];
            }
        }
        PyMem_Free(old_keys);
        PyMem_Free(old_depths);
    }
    Py_ssize_t i = slot_of(self, (uintptr_t)container);
    if (self->keys[i] == 0) {
        self->used++;
    }
    self->keys[i] = (uintptr_t)container;
    self->depths[i] = depth;
    return 0;
}

static int
count(Budget *self, Py_ssize_t n, PyObject *container, int deepest_child)
{
    self->elements += n;
    if (self->elements > self->max_elements) {
        PyErr_Format(LimitError,
                     "object decodes to more than %zd values: limit max_elements=%zd",
                     self->max_elements, self->max_elements);
        return -1;
    }
    int depth = 1 + deepest_child;
    if (depth > self->max_depth) {
        PyErr_Format(LimitError, "object nests deeper than %zd: limit max_depth=%zd",
                     self->max_depth, self->max_depth);
        return -1;
    }
    return remember(self, container, depth);
}

static PyObject *
budget_array(PyObject *op, PyObject *value)
{
    Budget *self = (Budget *)op;
    if (!PyList_Check(value) && !PyTuple_Check(value)) {  /* a tuple with use_list=False */
        PyErr_SetString(PyExc_TypeError, "_array takes the decoded list");
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(value);
    PyObject **items = PySequence_Fast_ITEMS(value);
    int deepest = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        int d = depth_of(self, items[i]);
        if (d > deepest) {
            deepest = d;
        }
    }
    if (count(self, n, value, deepest) < 0) {
        return NULL;
    }
    return Py_NewRef(value);
}

static PyObject *
budget_map(PyObject *op, PyObject *value)
{
    Budget *self = (Budget *)op;
    if (!PyDict_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "_map takes the decoded dict");
        return NULL;
    }
    Py_ssize_t pos = 0;
    PyObject *key, *item;
    int deepest = 0;
    while (PyDict_Next(value, &pos, &key, &item)) {  /* keys can't be containers */
        int d = depth_of(self, item);
        if (d > deepest) {
            deepest = d;
        }
    }
    if (count(self, 2 * PyDict_GET_SIZE(value), value, deepest) < 0) {
        return NULL;
    }
    return Py_NewRef(value);
}

static PyObject *
budget_reset(PyObject *op, PyObject *unused)
{
    Budget *self = (Budget *)op;
    self->elements = 0;
    if (self->used) {
        memset(self->keys, 0, self->cap * sizeof(uintptr_t));
        self->used = 0;
    }
    Py_RETURN_NONE;
}

static PyMethodDef budget_methods[] = {
    {"reset", budget_reset, METH_NOARGS, "Start counting the next object."},
    {"_array", budget_array, METH_O, "msgpack's list_hook: count a completed array."},
    {"_map", budget_map, METH_O, "msgpack's object_hook: count a completed map."},
    {NULL},
};

static PyMemberDef budget_members[] = {
    {"elements", T_PYSSIZET, offsetof(Budget, elements), 0,
     "Values counted in the current object."},
    {"max_elements", T_PYSSIZET, offsetof(Budget, max_elements), READONLY, NULL},
    {"max_depth", T_PYSSIZET, offsetof(Budget, max_depth), READONLY, NULL},
    {NULL},
};

static PyTypeObject BudgetType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ioserver._native.DecodeBudget",
    .tp_basicsize = sizeof(Budget),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_new = PyType_GenericNew,
    .tp_init = budget_init,
    .tp_dealloc = budget_dealloc,
    .tp_methods = budget_methods,
    .tp_members = budget_members,
    .tp_doc = "framing.DecodeBudget's hooks in C (see framing.PyDecodeBudget).",
};

static PyObject *
set_limit_error(PyObject *module, PyObject *cls)
{
    if (!PyType_Check(cls) || !PyType_IsSubtype((PyTypeObject *)cls,
                                                 (PyTypeObject *)PyExc_Exception)) {
        PyErr_SetString(PyExc_TypeError, "_set_decode_limit_error(an Exception subclass)");
        return NULL;
    }
    Py_XSETREF(LimitError, Py_NewRef(cls));
    Py_RETURN_NONE;
}

static PyMethodDef budget_functions[] = {
    {"_set_decode_limit_error", set_limit_error, METH_O,
     "The exception DecodeBudget raises past its bounds (framing.DecodeLimitError)."},
    {NULL},
};

int
ioserver_init_budget(PyObject *module)
{
    LimitError = Py_NewRef(PyExc_ValueError);  /* until framing.py sets its own */
    if (PyType_Ready(&BudgetType) < 0
        || PyModule_AddObjectRef(module, "DecodeBudget", (PyObject *)&BudgetType) < 0) {
        return -1;
    }
    return PyModule_AddFunctions(module, budget_functions);
}
