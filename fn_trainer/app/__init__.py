"""The application: the command line, the experiments and their report, the solvers,
the exporter of the homework's solution.py and the grading kit."""

PROG = "fn-trainer"  # the command's name, as pyproject.toml installs it
