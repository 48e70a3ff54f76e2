"""What callers of the runtime see: the container spec and the ``Runtime`` protocol."""
