/* The native channel part (to be written). */
#include "native.h"

int
ioserver_init_channel(PyObject *module)
{
    return 0;
}
