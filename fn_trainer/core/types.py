"""The types every layer passes around, named once."""
from __future__ import annotations

from typing import Dict, Tuple

from torch import Tensor

Params = Dict[str, Tensor]  # parameter name -> tensor, as functional_call takes them
Batch = Tuple[Tensor, Tensor]  # (x (B, C, H, W), targets (B, n_classes))
