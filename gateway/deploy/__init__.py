"""Agents change stacks through tools, not files: deploy, plan, versions and confirmations."""
