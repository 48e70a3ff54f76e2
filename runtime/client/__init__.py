"""The caller's process: ``LinuxRuntime`` and the records and folders it keeps.

The caller may run threads, so nothing here forks container code: that is the holder's job."""
