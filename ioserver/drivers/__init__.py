"""One module per kind of I/O; everything in here runs on the I/O thread only."""
