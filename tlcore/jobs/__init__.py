"""How work leaves the web process: a ``JobSpec`` handed to a runner (local worker processes or Ray), the
worker's entry point, the events read back; the analyses as jobs."""
