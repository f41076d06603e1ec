"""Orchestration: the `ddpo` command line, the demo, the reward-server child process.

The one package that imports both sides; `trainer/` and `reward_server/` share
only `shared/` and never import each other or this package.
"""
