"""A /proc and /sys view that tells a container its own limits (FUSE)."""
