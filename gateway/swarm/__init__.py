"""Docker Swarm stacks: the backend, its Engine API calls, tasks, and the docker CLI."""
