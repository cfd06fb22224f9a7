/* The native select part (to be written). */
#include "native.h"

int
ioserver_init_select(PyObject *module)
{
    return 0;
}
