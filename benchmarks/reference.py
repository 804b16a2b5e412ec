"""The reference: the homework template's object-oriented training loop.

An ``nn.Module`` with its own parameters, ``torch.optim.Adam``, ``loss.backward()``
and ``.grad`` buffers, exactly as the template's ``Trainer.training_step`` does it
(including its per-step Python floats for accuracy and gradient norm).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from fn_trainer import NetworkConfiguration, accuracy, cross_entropy, global_norm
from fn_trainer.core.networks import activation, cnn, mlp


class ReferenceTrainer:
    """``network_type`` "mlp" or "cnn" on ``(1, 28, 28)`` inputs, trained with ``torch.optim.Adam``."""

    def __init__(self, network_type: str, config: NetworkConfiguration, lr: float = 1e-3,
                 n_classes: int = 10, seed: int = 0):
        torch.manual_seed(seed)
        act = activation("relu")
        self.network = (mlp(28 * 28, config, n_classes, act) if network_type == "mlp"
                        else cnn(1, config, n_classes, act))
        self.optimizer = torch.optim.Adam(self.network.parameters(), lr=lr)
        self.optimizer_step = self.optimizer.step

    def compute_loss_and_accuracy(self, X: Tensor, y: Tensor):
        probs = self.network(X)
        return cross_entropy(probs, y), float(accuracy(probs, y))

    @staticmethod
    def compute_gradient_norm(network: nn.Module) -> float:
        return float(global_norm(p.grad for p in network.parameters()))

    def training_step(self, X_batch: Tensor, y_batch: Tensor) -> float:
        self.optimizer.zero_grad()
        loss, _ = self.compute_loss_and_accuracy(X_batch, y_batch)
        loss.backward()
        norm = self.compute_gradient_norm(self.network)
        self.optimizer_step()
        return norm

    def train_steps(self, X: Tensor, T: Tensor, batch_size: int, n_steps: int) -> float:
        """The first ``n_steps`` minibatches of an epoch over ``(X, one-hot T)``, in order;
        returns the last gradient norm."""
        n_steps = min(n_steps, math.ceil(X.shape[0] / batch_size))
        self.network.train()
        norm = 0.0
        for b in range(n_steps):
            idx = slice(b * batch_size, (b + 1) * batch_size)
            norm = self.training_step(X[idx], T[idx])
        return norm


class CompiledReferenceTrainer(ReferenceTrainer):
    """The same loop as the first speed-up a PyTorch user tries: the module under
    ``torch.compile`` (``nn.Module.compile``, parameter names unchanged) and the optimizer
    step compiled, as PyTorch's tutorial on compiling the optimizer shows. The template's
    per-step Python floats stay."""

    def __init__(self, network_type: str, config: NetworkConfiguration, lr: float = 1e-3,
                 n_classes: int = 10, seed: int = 0):
        super().__init__(network_type, config, lr, n_classes, seed)
        self.network.compile()
        self.optimizer_step = torch.compile(self.optimizer.step)
