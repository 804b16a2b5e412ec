"""Homework 3, practical part: the course's ``solution.py`` template, filled in.

Every name, signature, default and attribute is the template's. The mathematics
(cross-entropy on clipped probabilities, accuracy, one-hot encoding, feature-wise
normalisation, gradient and Jacobian norms, Adam) is the ``fn_trainer`` package's;
this file only adapts it to the template's object-oriented interface.
"""
import math
import numbers
import os
import random
from functools import partial
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple, Union  # noqa: F401  (the template's imports)

import numpy as np
import torch
import torchvision
import tqdm

from fn_trainer.core.checks import check_positive_int, is_finite_number
from fn_trainer.core.config import HOMEWORK_SEED, NetworkConfiguration
from fn_trainer.core.data import load_fashion_mnist
from fn_trainer.core.data import normalize as normalize_splits
from fn_trainer.core.diagnostics import global_norm
from fn_trainer.core.diagnostics import gradient_norm as functional_gradient_norm
from fn_trainer.core.diagnostics import jacobian_norm as functional_jacobian_norm
from fn_trainer.core.evaluate import chunked_mean
from fn_trainer.core.losses import EPSILON, accuracy, cross_entropy
from fn_trainer.core.losses import one_hot as one_hot_labels
from fn_trainer.core.networks import NETWORK_TYPES, cnn, feature_map_sizes, mlp
from fn_trainer.core.networks import activation as activation_module
from fn_trainer.core.optim import adam, adam_update, scheduled_lr
from fn_trainer.core.paths import ensure_writable_dir, write_figure
from fn_trainer.core.splits import check_split

SEED = HOMEWORK_SEED
np.random.seed(SEED)
torch.manual_seed(SEED)
random.seed(SEED)

EQUIVARIANCE_FIGURES = ("original", "features", "shift_difference", "rotation_difference")
# Where test_equivariance saves its figures: set it (solution.FIGURES_DIR = "figures")
# rather than pass it, since the template's signature is (self).
FIGURES_DIR: Union[str, os.PathLike] = "."

# `from solution import *` gives what the template's gives (it has no __all__: its imports and
# its own names) and FunctionalAdam, not the fn_trainer helpers imported above
__all__ = ["random", "np", "torch", "torchvision", "tqdm", "partial", "Tuple", "Callable", "List", "NamedTuple",
           "NetworkConfiguration", "gradient_norm", "jacobian_norm", "FunctionalAdam", "Trainer"]


def _plain(splits) -> Tuple[Tuple[torch.Tensor, torch.Tensor], ...]:
    """The template's plain tuples: ``torch.save`` of a split loads anywhere, no class needed."""
    return tuple((X, y) for X, y in splits)


def gradient_norm(function: Callable, *tensor_list: List[torch.Tensor]) -> float:
    """``||grad function(*tensor_list)||_2`` over all the tensors together, as a float.

    Computed with ``torch.func``, whose transforms take what ``torch.autograd`` takes
    except a ``torch.autograd.Function`` without ``setup_context``, values that leave
    torch (NumPy) and in-place changes to a tensor the function holds (a ``BatchNorm``
    layer in training mode updates its running statistics; in ``eval()`` mode it does
    not): those raise torch's ``RuntimeError``."""
    # detached: inputs made with requires_grad=True give a norm with a graph, which float() warns about
    return float(functional_gradient_norm(function, *tensor_list).detach())


def jacobian_norm(function: Callable, input_tensor: torch.Tensor) -> float:
    """Frobenius norm of the Jacobian of ``function`` at ``input_tensor``, as a float
    (``torch.func``: the functions it takes are ``gradient_norm``'s)."""
    return float(functional_jacobian_norm(function, input_tensor).detach())


class FunctionalAdam(torch.optim.Adam):
    """``torch.optim.Adam`` whose ``step()`` is ``fn_trainer.core.optim.adam_update``.

    Each parameter with a ``.grad`` is updated in place. The per-parameter state keeps
    ``torch.optim.Adam``'s keys (``step``, ``exp_avg``, ``exp_avg_sq``), so the two load
    each other's state dicts; ``lr``, ``betas`` and ``eps`` are read from the parameter
    group at every step, so schedulers keep working. Options the homework's Adam does
    not use (``weight_decay``, ``amsgrad``, ``maximize``) are refused.
    """

    def __init__(self, params, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self._hyper_cache: Dict[Tuple[float, ...], object] = {}
        self._hyper_parameters(lr, *betas, eps)  # rejects bad hyper-parameters, naming them
        super().__init__(params, lr=lr, betas=tuple(betas), eps=eps)

    def __setstate__(self, state: Dict) -> None:  # pickling and deepcopy keep torch's fields only
        super().__setstate__(state)
        self._hyper_cache = {}

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], torch.Tensor]] = None) -> Optional[torch.Tensor]:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for option, plain in (("weight_decay", 0), ("amsgrad", False), ("maximize", False)):
                if group.get(option, plain) != plain:
                    raise ValueError(f"FunctionalAdam supports only {option}={plain}, got {group[option]!r}")
            hyper = self._hyper_parameters(group["lr"], *group["betas"], group["eps"])
            # adam_update keeps one step count per call: parameters that were updated
            # equally often (all of them, unless some once had no gradient) go together.
            cohorts: Dict[int, List[torch.Tensor]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise TypeError("FunctionalAdam does not support sparse gradients")
                cohorts.setdefault(int(self.state[p].get("step", 0)), []).append(p)
            for count, cohort in cohorts.items():
                self._update(hyper, count, cohort)
        return loss

    def _hyper_parameters(self, lr: float, b1: float, b2: float, eps: float):
        """An empty ``AdamState`` carrying the group's hyper-parameters, built (and
        checked) once per distinct setting rather than at every step. The learning rate
        may be 0, where a schedule may end, as ``torch.optim.Adam`` takes it; a tensor one
        is read as its value (``torch.optim.Adam`` may then round the step size in the
        tensor's dtype, a last-bit difference)."""
        key = (float(lr), b1, b2, eps)
        if key not in self._hyper_cache:
            self._hyper_cache.clear()  # a schedule moves on: keep only the current setting
            self._hyper_cache[key] = scheduled_lr(adam(b1=b1, b2=b2, eps=eps).init({}), lr)
        return self._hyper_cache[key]

    def _update(self, hyper, count: int, cohort: List[torch.Tensor]) -> None:
        for p in cohort:
            if "exp_avg" not in self.state[p]:
                self.state[p].update(step=torch.tensor(0.0), exp_avg=torch.zeros_like(p),
                                     exp_avg_sq=torch.zeros_like(p))
        states = [self.state[p] for p in cohort]
        state = hyper._replace(
            count=torch.tensor(count, dtype=torch.int64),
            mu={str(i): s["exp_avg"] for i, s in enumerate(states)},
            nu={str(i): s["exp_avg_sq"] for i, s in enumerate(states)},
        )
        grads = {str(i): p.grad for i, p in enumerate(cohort)}
        # in place: the parameters, exp_avg and exp_avg_sq are overwritten, as torch.optim.Adam does
        adam_update(grads, state, {str(i): p for i, p in enumerate(cohort)}, inplace=True)
        for s in states:
            s["step"] = torch.tensor(float(count + 1))


class Trainer:
    """The homework's trainer: a network, its optimizer, the data splits and the logs."""

    def __init__(self,
                 network_type: str = "mlp",
                 net_config: NetworkConfiguration = NetworkConfiguration(),
                 datapath: str = './data',
                 n_classes: int = 10,
                 lr: float = 0.0001,
                 batch_size: int = 128,
                 activation_name: str = "relu",
                 normalization: bool = True):
        if network_type not in NETWORK_TYPES:  # checked before any download
            raise ValueError("Network type not supported")
        if isinstance(lr, bool) or not isinstance(lr, numbers.Real):
            raise TypeError(f"lr must be a finite number >= 0, got {lr!r} ({type(lr).__name__})")
        if not is_finite_number(lr) or lr < 0:  # torch.optim.Adam takes 0 too: nothing moves
            raise ValueError(f"lr must be a finite number >= 0, got {lr!r}")
        lr = float(lr)
        batch_size = check_positive_int("batch_size", batch_size)
        n_classes = check_positive_int("n_classes", n_classes)
        self.train, self.valid, self.test = self.load_dataset(datapath)
        if normalization:
            self.train, self.valid, self.test = self.normalize(self.train, self.valid, self.test)
        self.network_type = network_type
        activation_function = self.create_activation_function(activation_name)
        input_dim = self.train[0][0].shape
        if network_type == "mlp":
            self.network = self.create_mlp(input_dim[0] * input_dim[1] * input_dim[2], net_config,
                                           n_classes, activation_function)
        else:  # "cnn"
            if type(self).create_cnn is _TEMPLATE_METHODS["create_cnn"]:  # its own layers: a kernel must fit
                feature_map_sizes(net_config, tuple(input_dim[1:]))  # (another builder decides for itself)
            self.network = self.create_cnn(input_dim[0], net_config, n_classes, activation_function)
        self.optimizer = FunctionalAdam(self.network.parameters(), lr=lr)

        self.datapath = datapath
        self.n_classes = n_classes
        self.lr = lr
        self.batch_size = batch_size
        self.epsilon = EPSILON

        self.train_logs = {'train_accuracy': [], 'validation_accuracy': [], 'train_loss': [],
                           'validation_loss': [], 'train_gradient_norm': []}

    @staticmethod
    def load_dataset(datapath: str) -> Tuple[Tuple[torch.Tensor, torch.Tensor],
                                             Tuple[torch.Tensor, torch.Tensor],
                                             Tuple[torch.Tensor, torch.Tensor]]:
        """Train (60000), validation (first 2000 test images), test (other 8000):
        ``(X (N, 1, 28, 28) float32 in 0-255, y (N,) int64)`` each."""
        return _plain(load_fashion_mnist(datapath, download=True))

    @staticmethod
    def create_mlp(input_dim: int, net_config: NetworkConfiguration, n_classes: int,
                   activation: torch.nn.Module) -> torch.nn.Module:
        """Flatten -> [Linear -> activation] per ``dense_hiddens`` -> Linear -> Softmax."""
        return mlp(input_dim, net_config, n_classes, activation)

    @staticmethod
    def create_cnn(in_channels: int, net_config: NetworkConfiguration, n_classes: int,
                   activation: torch.nn.Module) -> torch.nn.Module:
        """[Conv2d -> activation -> MaxPool2d(2)] per conv layer (no pool after the last),
        AdaptiveMaxPool2d((4, 4)) -> Flatten -> [Linear -> activation]... -> Linear -> Softmax."""
        return cnn(in_channels, net_config, n_classes, activation)

    @staticmethod
    def create_activation_function(activation_str: str) -> torch.nn.Module:
        """``nn.ReLU`` / ``nn.Tanh`` / ``nn.Sigmoid`` for "relu" / "tanh" / "sigmoid"."""
        return activation_module(activation_str, "activation_str")

    def one_hot(self, y: torch.Tensor) -> torch.Tensor:
        """``(N,)`` labels in ``[0, n_classes)`` -> ``(N, n_classes)`` float32 one-hot."""
        return one_hot_labels(y, self.n_classes)

    def compute_loss_and_accuracy(self, X: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, float]:
        """Cross-entropy of the clipped probabilities (a 0-dim tensor keeping its graph)
        and accuracy (a float) of the network on ``X``; ``y`` one-hot (or labels)."""
        targets = self._targets(y, X, "compute_loss_and_accuracy data")
        probs = self.network(X)
        return self._loss(probs, targets), float(accuracy(probs, targets))

    @staticmethod
    def compute_gradient_norm(network: torch.nn.Module) -> float:
        """Euclidean norm of all the parameters' ``.grad`` buffers, flattened together."""
        grads = [p.grad for p in network.parameters() if p.grad is not None]
        if not grads:
            raise ValueError("network has no gradients: run a backward pass or training_step first")
        return float(global_norm(grads))

    def training_step(self, X_batch: torch.Tensor, y_batch: torch.Tensor) -> float:
        """One Adam update on a batch (``y_batch`` one-hot, or labels); returns the
        gradient norm for that batch.

        The template's way: the loss of ``compute_loss_and_accuracy`` (an overriding one's
        too), whose backward pass leaves the gradient in each parameter's ``.grad``, and
        ``self.optimizer.step()``, which applies the functional Adam update in place.
        """
        # NaN and infinity are looked for only when the gradient is not finite: a scan of
        # every batch would cost more than the step's Adam update
        targets = self._targets(y_batch, X_batch, "training_step batch", finite=False)
        self.optimizer.zero_grad()
        loss, _ = self._loss_and_accuracy(accuracy_too=False)(X_batch, targets)
        loss.backward()
        norm = self.compute_gradient_norm(self.network)
        if not math.isfinite(norm):
            self._targets(y_batch, X_batch, "training_step batch")  # names a NaN or inf in the batch
        self.optimizer.step()
        return norm

    def log_metrics(self, X_train: torch.Tensor, y_train_oh: torch.Tensor,
                    X_valid: torch.Tensor, y_valid_oh: torch.Tensor) -> None:
        self.network.eval()
        with torch.inference_mode():
            train_loss, train_accuracy = self.compute_loss_and_accuracy(X_train, y_train_oh)
            valid_loss, valid_accuracy = self.compute_loss_and_accuracy(X_valid, y_valid_oh)
        self.train_logs['train_accuracy'].append(train_accuracy)
        self.train_logs['validation_accuracy'].append(valid_accuracy)
        self.train_logs['train_loss'].append(float(train_loss))
        self.train_logs['validation_loss'].append(float(valid_loss))

    def train_loop(self, n_epochs: int):
        # Prepare train and validation data
        X_train, y_train = self.train
        y_train_oh = self.one_hot(y_train)
        X_valid, y_valid = self.valid
        y_valid_oh = self.one_hot(y_valid)

        n_batches = int(np.ceil(X_train.shape[0] / self.batch_size))

        self.log_metrics(X_train[:2000], y_train_oh[:2000], X_valid, y_valid_oh)

        for epoch in tqdm.tqdm(range(n_epochs)):
            for batch in range(n_batches):
                minibatchX = X_train[self.batch_size * batch:self.batch_size * (batch + 1), :]
                minibatchY = y_train_oh[self.batch_size * batch:self.batch_size * (batch + 1), :]
                gradient_norm = self.training_step(minibatchX, minibatchY)
            # Just log the last gradient norm
            self.train_logs['train_gradient_norm'].append(gradient_norm)
            self.log_metrics(X_train[:2000], y_train_oh[:2000], X_valid, y_valid_oh)
        return self.train_logs

    def evaluate(self, X: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, float]:
        """Average loss (a 0-dim tensor without graph) and accuracy (a float) over
        ``X`` of ``compute_loss_and_accuracy``; ``y`` holds class indices ``(N,)`` or one-hot
        rows ``(N, n_classes)``."""
        targets = self._targets(y, X, "evaluate data")
        # over chunks, weighted by their rows: an overriding compute_loss_and_accuracy's values,
        # or the class's own, computed without its scan of each chunk
        loss, acc = chunked_mean(self._loss_and_accuracy(), X, targets)
        # the loss in the dtype and on the device the template's computed one has
        where = next(self.network.parameters(), X)
        dtype = torch.promote_types(where.dtype, targets.dtype)
        return torch.tensor(loss, dtype=dtype, device=where.device), acc

    @staticmethod
    def normalize(train: Tuple[torch.Tensor, torch.Tensor],
                  valid: Tuple[torch.Tensor, torch.Tensor],
                  test: Tuple[torch.Tensor, torch.Tensor]) -> Tuple[Tuple[torch.Tensor, torch.Tensor],
                                                                    Tuple[torch.Tensor, torch.Tensor],
                                                                    Tuple[torch.Tensor, torch.Tensor]]:
        """``X <- (X - mean) / std`` with the training set's feature-wise statistics."""
        return _plain(normalize_splits(train, valid, test))

    def test_equivariance(self) -> Dict[str, np.ndarray]:
        """Section 2, question 1: how a small conv net reacts to shifts and rotations.

        Saves four PNG figures, ``equivariance_<name>.png`` in the folder ``FIGURES_DIR``
        (the current folder unless set), for ``name`` in ``EQUIVARIANCE_FIGURES``: the
        first training image, the conv net's feature map of it,
        ``|shift(f(x)) - f(shift(x))|`` and ``|rotation(f(x)) - f(rotation(x))|``.
        Returns the plotted 2-D arrays by name.
        """
        test_im = self.train[0][0] / 255.
        conv = torch.nn.Conv2d(kernel_size=3, in_channels=1, out_channels=1, stride=1, padding=0)
        model = lambda x: torch.relu(conv(torch.relu(conv(x))))
        shift_amount = 5
        shift = partial(torchvision.transforms.functional.affine, angle=0,
                        translate=(shift_amount, shift_amount), scale=1, shear=0)
        rotation = partial(torchvision.transforms.functional.affine, angle=90,
                           translate=(0, 0), scale=1, shear=0)

        with torch.no_grad():
            features = model(test_im)
            images = {
                "original": test_im[0],
                "features": features[0],
                "shift_difference": (shift(features) - model(shift(test_im))).abs()[0],
                "rotation_difference": (rotation(features) - model(rotation(test_im))).abs()[0],
            }
        arrays = {name: image.cpu().numpy() for name, image in images.items()}
        save_figures(arrays, ensure_writable_dir(FIGURES_DIR))
        return arrays

    def _loss_and_accuracy(self, accuracy_too: bool = True) -> Callable:
        """``(X, one-hot targets) -> (loss, accuracy)``: ``compute_loss_and_accuracy`` where a
        subclass, the instance or a patch of the class replaces it (the loss it defines is
        the one trained and evaluated), else its values without its checks of the data,
        which its callers made (and, unless ``accuracy_too``, without the accuracy: ``None``)."""
        template_own = _TEMPLATE_METHODS["compute_loss_and_accuracy"]
        if getattr(self.compute_loss_and_accuracy, "__func__", None) is not template_own:
            return self.compute_loss_and_accuracy

        def own(X: torch.Tensor, targets: torch.Tensor):
            probs = self.network(X)
            return self._loss(probs, targets), accuracy(probs, targets) if accuracy_too else None

        return own

    @property
    def _loss(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The template's loss: cross-entropy of probabilities clipped at ``self.epsilon``."""
        return partial(cross_entropy, eps=self.epsilon)

    def _targets(self, y: torch.Tensor, X: torch.Tensor, name: str, finite: bool = True) -> torch.Tensor:
        """One-hot ``(N, n_classes)`` targets from labels or one-hot ``y``, checked against ``X``.
        One-hot rows are taken at their width, as the template takes them; labels need ``n_classes``."""
        if isinstance(y, torch.Tensor) and y.dim() == 2:
            if not y.dtype.is_floating_point:
                y = y.float()  # integer one-hot rows, as torch.nn.functional.one_hot makes them
            return check_split(name, (X, y), y.shape[1], finite=finite)[1]
        return check_split(name, (X, y), self.n_classes, finite=finite)[1]


# The class's own methods, as defined here: a subclass, an instance or a patch of the class
# (unittest.mock.patch.object) that replaces one is told apart from them
_TEMPLATE_METHODS = {"create_cnn": Trainer.create_cnn,  # a staticmethod read off the class: its function
                     "compute_loss_and_accuracy": Trainer.compute_loss_and_accuracy}


def save_figures(arrays: Dict[str, np.ndarray], out_dir: Union[str, os.PathLike]) -> List[str]:
    """Write each 2-D array as ``out_dir/equivariance_<name>.png``; return the paths.

    Uses matplotlib's object-oriented API on an Agg canvas: no pyplot state, no window.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    paths = []
    for name, array in arrays.items():
        fig = Figure(figsize=(4, 4))
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        image = ax.imshow(array, cmap="gray" if name == "original" else "viridis")
        fig.colorbar(image, ax=ax)
        ax.set_title(name.replace("_", " "))
        ax.set_axis_off()
        path = os.path.join(os.fspath(out_dir), f"equivariance_{name}.png")
        write_figure(path, fig, dpi=100)
        paths.append(path)
    return paths
