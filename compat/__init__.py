"""The homework's ``solution.py`` interface, running on the functional core.

``compat.solution`` is imported on purpose only: importing it seeds the global random
generators, as the course template does.
"""
