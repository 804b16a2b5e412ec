"""The application: the command line, the experiments and their report, the solvers,
the exporter of the homework's solution.py and the grading kit."""
