"""The policy guard: the rules, the file references, and the verdicts on a stack."""
