"""Training over the core's pure step: the epoch loop, sweeps, checkpoints and compilation.
Imports only ``fn_trainer.core``."""
