"""The Docker Engine API: the client and its transport, container listings, logs."""
