"""Code that runs inside a container's namespaces, also after ``pivot_root``: thin
syscall wrappers, mounts, confinement. Standard library only."""
