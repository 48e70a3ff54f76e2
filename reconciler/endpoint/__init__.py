"""``reconciler run --listen``: a small HTTP endpoint for machines, beside the loop.

``GET /status`` serves the ``status --json`` document, ``GET /metrics`` the loop's
metrics in the Prometheus text format, and ``POST /hooks/github`` / ``/hooks/gitea``
(only with a webhook secret) take a signed push and ask for a pass. The loop knows
nothing of HTTP: the endpoint reads the passes it reports and asks for passes through
the hook :func:`reconciler.control.loop.run_loop` hands out. See ``docs/reconciler.md``.
"""
