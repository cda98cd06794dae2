"""The Docker Engine API, for one engine or a fleet of them.

``endpoint`` (where an engine is: DOCKER_HOST and TLS, as every Docker tool reads them) →
``channels`` (Unix socket, TCP, TLS, ssh dial-stdio) → ``transport`` (HTTP/1.1 over kept channels)
→ ``connection`` (the negotiated version, every call's deadline, the breaker of ``breaker``) →
``client`` (the reads, each written once; ``streams`` for logs and events), with ``blocking`` for
callers in worker threads. ``containers`` and ``logs`` read what the engine answers.
"""
