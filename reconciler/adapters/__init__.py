"""The imperative shell's adapters: one module per outside system, each behind a Protocol of ``reconciler.ports``."""
