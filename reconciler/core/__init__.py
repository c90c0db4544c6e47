"""The functional core: spec models, observed state, renewal policies, planner, rendering.

Nothing in this package reads a file, a socket, the environment or the clock
(import-linter checks the imports; the time is always a parameter).
"""
