"""Streaming media I/O on PyAV."""
