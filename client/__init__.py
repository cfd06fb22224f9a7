"""client: drive a standalone ioserver daemon with the same API as the embedded server.

import client
io = client.connect("/run/user/1000/ioserver.sock")   # or "tcp://host:port", token=...
# or "tls://host:port", token=..., ssl=ssl.create_default_context(cafile="ca.pem")
conn = io.connect_tcp("127.0.0.1", 8080, packet="line")  # a RemotePort
conn.send(b"hello\\n")
msg = conn.recv()                                        # Data / Closed / ...
"""

from ioserver.tlsclient import TLSError

from .remote import RemoteIOServer, RemotePort, RemoteTimer, connect

__all__ = ["RemoteIOServer", "RemotePort", "RemoteTimer", "TLSError", "connect"]
