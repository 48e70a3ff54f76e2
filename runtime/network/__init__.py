"""Container networking: slirp4netns per container and host port checks."""
