"""Root filesystems and SDK layers: downloads, checksums, safe extraction, caches."""
