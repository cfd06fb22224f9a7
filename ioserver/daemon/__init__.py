"""Standalone mode: the daemon process (serve) and its client sessions."""
