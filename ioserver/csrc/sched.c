/* The native sched part (to be written). */
#include "native.h"

int
ioserver_init_sched(PyObject *module)
{
    return 0;
}
