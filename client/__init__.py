"""ioserver_client: drive a standalone ioserver daemon with the same API as the embedded server.

import ioserver_client
io = ioserver_client.connect()        # the daemon's default socket; or a path,
                                      # or "tcp://host:port" with token=...
conn = io.connect_tcp("127.0.0.1", 8080, packet="line")  # a RemotePort
conn.send(b"hello\\n")
msg = conn.recv()                                        # Data / Closed / ...

The package lives in the repository's ``client/`` folder and installs as
``ioserver_client`` (a top-level ``client`` would clash with any program's own
``client.py``).
"""

from .remote import RemoteIOServer, RemotePort, RemoteTimer, connect

__all__ = ["RemoteIOServer", "RemotePort", "RemoteTimer", "connect"]
