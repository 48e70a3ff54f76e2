"""The rootless container runtime. Sub-packages are named for the process their code
runs in (client, holder, sandbox) or the one concern they serve (cgroups, network,
images, security); ``docs/runtime.md`` draws how they fit."""
