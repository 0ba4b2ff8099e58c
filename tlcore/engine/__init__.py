"""One run: what it is asked (``config``), what it says (``events``), cached features and frozen-body heads, the
loop (``train``), evaluation, and the run on disk (``checkpoint``). Runs in a worker process, never in the web server."""
