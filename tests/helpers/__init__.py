"""Helpers for the tests: a recording fake scorer, tiny random CLIP weights, scripted ratings.

Kept out of the installed packages: nothing outside tests/ uses them.
"""
