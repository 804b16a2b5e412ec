"""Speed benchmarks: the functional trainer against the template's object-oriented loop.

Run ``python -m benchmarks.epoch --help``.
"""
