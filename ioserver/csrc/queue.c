/* The native queue part (to be written). */
#include "native.h"

int
ioserver_init_queue(PyObject *module)
{
    return 0;
}
