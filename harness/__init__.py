"""Helpers for the code that drives the service from outside: bench/, scripts/ and tests/.

- `harness.processes`: a free loopback port, waiting for a started server to be ready,
  stopping it and everything it started, and a process tree's CPU time and memory (psutil).
- `harness.models`: tiny untrained models exported as the service expects them (torch).

Nothing here imports `service`: the callers treat it as a black box started with
`python -m service`. Not part of the served package (the container image leaves it out).
"""
