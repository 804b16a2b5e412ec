import os
import sys

from .app.cli import main

status = main()
if os.environ.get("RANK") is not None:
    # A rank of a torchrun launch: gloo's worker threads may still free a finished
    # collective's tensors, which needs the interpreter; finalizing it under them aborts the
    # process (SIGABRT) now and then. Everything is written and closed by now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
sys.exit(status)
