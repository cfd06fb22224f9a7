"""client: drive a standalone ioserver daemon with the same API as the embedded one."""
