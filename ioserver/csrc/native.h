/* The native core of ioserver: shared declarations of its parts.
 *
 * One extension module, ioserver._native, built from the files in this folder;
 * each part (sched.c, channel.c, select.c, queue.c) registers its types from an
 * init function called by module.c. The pure-Python modules (sched.py,
 * channel.py, select.py, wakeup.py) are the reference: every type here keeps
 * their contract (docs/architecture.md). The GIL is the only mutex.
 */
#ifndef IOSERVER_NATIVE_H
#define IOSERVER_NATIVE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* Each part's init: add its types and functions to the module; 0 or -1. */
int ioserver_init_sched(PyObject *module);
int ioserver_init_channel(PyObject *module);
int ioserver_init_select(PyObject *module);
int ioserver_init_queue(PyObject *module);

#endif
