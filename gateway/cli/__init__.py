"""The command line: ``compose-agent serve``, ``vault``."""
