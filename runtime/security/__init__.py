"""seccomp profiles: Docker's format read, compiled to BPF with libseccomp."""
