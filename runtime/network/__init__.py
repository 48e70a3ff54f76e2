"""Container networking: the driver interface (``driver``), slirp4netns per container
(``slirp``) and host port checks (``ports``)."""
