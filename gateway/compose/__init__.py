"""The Compose v2 CLI boundary and the write path that runs it."""
