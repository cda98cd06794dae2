"""The policy guard: one strict reading of a stack, an allowlist of Compose's model, and the verdicts on it."""
