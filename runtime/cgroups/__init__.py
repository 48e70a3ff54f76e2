"""cgroup v2 for containers: detection, the cgroupfs driver, the systemd driver."""
