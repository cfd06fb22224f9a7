/* ioserver._native: the module object; each part adds its types (native.h). */
#include "native.h"

static int
native_exec(PyObject *module)
{
    /* The parts keep their types, marks and freelists in C statics: a second
     * exec (re-import after `del sys.modules[...]`, a subinterpreter) would
     * replace the types under live objects (the Op freelist hands out objects
     * of the old _Op while increfing the new one). */
    static int loaded = 0;
    if (loaded) {
        PyErr_SetString(PyExc_ImportError,
                        "ioserver._native can be initialised only once per process");
        return -1;
    }
    loaded = 1;
    if (ioserver_init_sched(module) < 0 || ioserver_init_channel(module) < 0
        || ioserver_init_select(module) < 0 || ioserver_init_queue(module) < 0
        || ioserver_init_messages(module) < 0 || ioserver_init_deliver(module) < 0
        || ioserver_init_port(module) < 0 || ioserver_init_write(module) < 0 || ioserver_init_budget(module) < 0) {
        return -1;
    }
    return 0;
}

static PyModuleDef_Slot native_slots[] = {
    {Py_mod_exec, native_exec},
#if PY_VERSION_HEX >= 0x030C0000
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED},
#endif
#ifdef Py_GIL_DISABLED
    /* The GIL is this module's only mutex: a free-threaded build keeps it on. */
    {Py_mod_gil, Py_MOD_GIL_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "ioserver._native",
    .m_doc = "The native core of ioserver: the hot paths of sched, channel, select, "
             "the request queue and the messages' constructors, behind the same "
             "contract as the pure-Python modules.",
    .m_size = 0,
    .m_slots = native_slots,
};

PyMODINIT_FUNC
PyInit__native(void)
{
    return PyModuleDef_Init(&native_module);
}
