"""The per-user holder process and what it forks: spare launchers, container inits,
exec runners. ``client`` is the caller's side of the conversation with it.

Nothing here may load pydantic, an HTTP client or an event loop (import-linter checks)."""
