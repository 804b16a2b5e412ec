"""The limits a submission runs under (defaults of the API and of ``fn-trainer grade``)."""

DEFAULT_TIMEOUT = 30.0  # seconds for each question, and for importing solution.py
DEFAULT_BUDGET = 480.0  # seconds for the whole grading: under Gradescope's usual 10-minute limit
START_ALLOWANCE = 20.0  # extra seconds for the import: starting Python and torch (4 s on a busy 2-core VM)
DEFAULT_MEMORY_MB = 8192  # RLIMIT_AS: address space, not resident memory; torch alone maps ~3 GB
FILE_SIZE_MB = 64  # RLIMIT_FSIZE: the largest file the submission may write
OUTPUT_KEPT = 4000  # bytes of the submission's printed output kept for the report
ANSWER_LIMIT = 256 << 20  # bytes; no answer to the grader's requests comes near this
ANSWER_NODES = 100_000  # lists, dicts and values an answer may unfold to (the exported solution's largest: 161)
