"""The grading kit: full marks for correct solutions, points lost exactly where a mistake
is, valid results for hostile submissions, the Gradescope bundle, the interface data."""
import importlib.util
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from template_spec import SPEC, read_spec

from fn_trainer.app.cli import main
from fn_trainer.app.export import export_solution
from fn_trainer.app.grading import TOTAL_POINTS, grade, grade_to_file, grader, probe, questions
from fn_trainer.app.grading import results as grading_results
from fn_trainer.app.grading.bundle import write_bundle
from fn_trainer.app.grading.functions import TENSOR_FUNCTIONS
from fn_trainer.app.grading.interface import (
    FUNCTIONS,
    NETWORK_CONFIGURATION_FIELDS,
    TRAINER_METHODS,
    differences,
)
from fn_trainer.app.grading.layers import describe_layer
from fn_trainer.app.grading.limits import START_ALLOWANCE
from fn_trainer.app.grading.probe import HEADER, answer, encode
from fn_trainer.app.grading.questions import QUESTIONS
from fn_trainer.app.grading.runner import decode_answer

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "compat" / "solution.py"
HOMEWORK_POINTS = {"1": 3, "2": 2, "3": 1, "4": 5, "5": 5, "6": 2, "7": 2, "8": 4, "9": 2, "10": 6, "11": 3}
TEST_KEYS = {"name", "number", "score", "max_score", "output", "visibility"}


def scores(results) -> dict:
    return {t["number"]: t["score"] for t in results["tests"]}


def assert_gradescope_format(results) -> None:
    assert set(results) == {"score", "execution_time", "output", "tests"}
    assert all(set(t) == TEST_KEYS for t in results["tests"])
    assert results["score"] == sum(t["score"] for t in results["tests"])
    assert {t["number"]: t["max_score"] for t in results["tests"] if t["number"] != "0"} == HOMEWORK_POINTS


def test_questions_carry_the_homeworks_points():
    assert {q.number: q.points for q in QUESTIONS} == HOMEWORK_POINTS
    assert TOTAL_POINTS == 35


def test_compat_solution_imports_nothing_of_the_grader_when_graded(tmp_path):
    """``compat/solution.py`` leans on ``fn_trainer``, which submissions cannot import;
    its exported single file carries what it uses and is what gets graded below."""
    results = grade(SOLUTION, timeout=5)
    assert results["score"] == 0 and "No module named 'fn_trainer'" in results["output"]


def test_compat_solution_scores_full_marks_with_the_reference_allowed(tmp_path, capsys):
    results_path = tmp_path / "results.json"
    assert main(["grade", str(SOLUTION), "--allow-reference", "--results", str(results_path)]) == 0
    results = json.loads(results_path.read_text())
    assert_gradescope_format(results)
    assert results["score"] == 35, capsys.readouterr().out


def test_exported_solution_scores_full_marks_through_the_command(tmp_path, capsys):
    results_path = tmp_path / "out" / "results.json"
    exported = export_solution(tmp_path / "solution.py")
    assert main(["grade", str(exported), "--results", str(results_path)]) == 0
    results = json.loads(results_path.read_text())
    assert_gradescope_format(results)
    assert results["score"] == 35, capsys.readouterr().out
    assert "score: 35/35" in capsys.readouterr().out


def test_processes_a_submission_forks_neither_answer_nor_cost_points(tmp_path):
    # a forked child returns into the probe as its parent does: only the parent may answer
    exported = export_solution(tmp_path / "exported.py").read_text()
    forking = mutate(exported, [("\nclass Trainer:\n", "\nimport os\nos.fork()\n\n\nclass Trainer:\n"),
                                ("        return one_hot_labels(y, self.n_classes)",
                                 "        os.fork()\n        return one_hot_labels(y, self.n_classes)")])
    (tmp_path / "solution.py").write_text(forking)
    results_path = tmp_path / "results.json"
    assert main(["grade", str(tmp_path / "solution.py"), "--results", str(results_path)]) == 0
    results = json.loads(results_path.read_text())
    assert_gradescope_format(results)
    assert results["score"] == 35, lost(results)


def test_a_fifo_the_submission_puts_at_the_results_is_replaced(tmp_path, capsys):
    results_path = tmp_path / "results.json"
    exported = export_solution(tmp_path / "exported.py").read_text()
    (tmp_path / "solution.py").write_text(exported + f"\nimport os\nos.mkfifo({str(results_path)!r})\n")
    assert main(["grade", str(tmp_path / "solution.py"), "--results", str(results_path)]) == 0
    assert json.loads(results_path.read_text())["score"] == 35


def test_grading_writes_nothing_in_the_folder_it_runs_in_nor_in_its_temporary_folder(tmp_path):
    """Hypothesis keeps a cache of the constants in the code it tests in .hypothesis/ of the
    current folder, once per process: a fresh process shows whether grading moves it. The
    submission writes beside its own folder, which is inside the grader's temporary one."""
    exported = export_solution(tmp_path / "exported.py").read_text()
    (tmp_path / "solution.py").write_text(exported + "\nopen('../beside.txt', 'w').write('x')\n")
    folder, temporary = tmp_path / "cwd", tmp_path / "tmp"
    folder.mkdir()
    temporary.mkdir()
    env = {**{k: v for k, v in os.environ.items() if k != "HYPOTHESIS_STORAGE_DIRECTORY"}, "TMPDIR": str(temporary)}
    done = subprocess.run([sys.executable, "-m", "fn_trainer", "grade", str(tmp_path / "solution.py"), "--results",
                           str(tmp_path / "results.json")], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "score: 35/35" in done.stdout
    # torch makes its cache folder there (torchinductor_<user>), a grading process nothing
    assert list(folder.iterdir()) == [] and not [p for p in temporary.iterdir() if "torchinductor" not in p.name]


# generated examples a part gets when a mutant is graded, besides its explicit ones (measured:
# each mutant below already loses its points with 1)
MUTANT_EXAMPLES = 3
# Plausible mistakes: (question, [(text in compat/solution.py, as exported, replacement), ...]).
MUTANTS = {
    "gradient with respect to the first tensor only": ("1", [(
        "functional_gradient_norm(function, *tensor_list)",
        "functional_gradient_norm(lambda first: function(first, *tensor_list[1:]), tensor_list[0])")]),
    "jacobian_norm computed as a gradient norm": ("2", [(
        "functional_jacobian_norm(function, input_tensor)",
        "functional_gradient_norm(lambda x: function(x).sum(), input_tensor)")]),
    "sigmoid gives tanh": ("3", [(
        'return activation_module(activation_str, "activation_str")',
        'return activation_module("tanh" if activation_str == "sigmoid" else activation_str, "activation_str")')]),
    "no softmax": ("4", [(
        "return mlp(input_dim, net_config, n_classes, activation)",
        "return torch.nn.Sequential(*list(mlp(input_dim, net_config, n_classes, activation))[:-1])")]),
    "flatten missing": ("4", [(
        "return mlp(input_dim, net_config, n_classes, activation)",
        "return torch.nn.Sequential(*list(mlp(input_dim, net_config, n_classes, activation))[1:])")]),
    "an activation after the output layer": ("4", [(
        "return mlp(input_dim, net_config, n_classes, activation)",
        "layers = list(mlp(input_dim, net_config, n_classes, activation))\n"
        "        return torch.nn.Sequential(*layers[:-1], activation, layers[-1])")]),
    "a max-pool after the last conv": ("5", [(
        "return cnn(in_channels, net_config, n_classes, activation)",
        "layers = list(cnn(in_channels, net_config, n_classes, activation))\n"
        "        last = max(i for i, m in enumerate(layers) if isinstance(m, torch.nn.Conv2d))\n"
        "        layers.insert(last + 2, torch.nn.MaxPool2d(kernel_size=2))\n"
        "        return torch.nn.Sequential(*layers)")]),
    "normalising with the test set's statistics": ("6", [(
        "return _plain(normalize_splits(train, valid, test))",
        "mean, std = test[0].mean(0), test[0].std(0)\n"
        "        return tuple(((X - mean) / std, y) for X, y in (train, valid, test))")]),
    "one_hot off by one": ("7", [(
        "return one_hot_labels(y, self.n_classes)",
        "return torch.nn.functional.one_hot(y, self.n_classes + 1)[:, 1:].float()")]),
    "no clipping": ("8", [(
        "return self._loss(probs, targets), float(accuracy(probs, targets))",
        "return cross_entropy(probs, targets, eps=0.0), float(accuracy(probs, targets))")]),
    # training_step returns compute_gradient_norm's answer, which question 10 takes as the submission's own
    "the norm of the parameters instead of their gradients": ("9", [(
        "grads = [p.grad for p in network.parameters() if p.grad is not None]",
        "grads = [p.detach() for p in network.parameters() if p.grad is not None]")]),
    "Adam ignoring lr": ("10", [(
        "        self.optimizer.step()\n        return norm",
        '        self.optimizer.param_groups[0]["lr"] = 1e-3\n'
        "        self.optimizer.step()\n        return norm")]),
    "evaluate returning the last batch's accuracy": ("11", [(
        "loss, acc = chunked_mean(self._loss_and_accuracy(), X, targets)",
        "for i in range(0, len(X), self.batch_size):\n"
        "            loss, acc = chunked_mean(self._loss_and_accuracy(), X[i:i + self.batch_size],\n"
        "                                     targets[i:i + self.batch_size])")]),
}


def test_an_evaluate_stub_gets_no_point_for_leaving_the_network_unchanged(tmp_path, monkeypatch):
    results = grade_in_process([(
        "    def evaluate(self, X: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, float]:\n",
        "    def evaluate(self, X: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, float]:\n"
        "        return 0.0, 0.0\n")], tmp_path, monkeypatch)
    assert scores(results)["11"] == 0


def test_a_training_step_without_its_update_keeps_the_points_of_its_right_gradient_norm(tmp_path, monkeypatch):
    """The second call's norm is taken where the submission's first call left the network:
    a missing update loses the update's parts, not the norm's too."""
    results = grade_in_process([("        self.optimizer.step()\n        return norm", "        return norm")],
                               tmp_path, monkeypatch)
    output = lost(results)["10"]
    assert "FAIL returns the gradient norm" not in output and "FAIL one Adam step" in output
    assert scores(results)["10"] == 3


def test_a_training_step_stub_that_fills_the_gradient_buffers_gets_no_point(tmp_path, monkeypatch):
    results = grade_in_process([(
        "    def training_step(self, X_batch: torch.Tensor, y_batch: torch.Tensor) -> float:\n",
        "    def training_step(self, X_batch: torch.Tensor, y_batch: torch.Tensor) -> float:\n"
        "        for p in self.network.parameters():\n"
        "            p.grad = torch.ones_like(p)\n"
        "        return float(sum(p.numel() for p in self.network.parameters())) ** 0.5\n")], tmp_path, monkeypatch)
    assert scores(results)["10"] == 0


def test_a_loss_clipped_at_a_written_out_epsilon_is_told_to_read_self_epsilon(tmp_path, monkeypatch):
    results = grade_in_process([("return self._loss(probs, targets), float(accuracy(probs, targets))",
                                 "return cross_entropy(probs, targets, eps=1e-9), float(accuracy(probs, targets))")],
                               tmp_path, monkeypatch)
    assert set(lost(results)) == {"8"}
    assert "is the loss clipped at 1e-09: read the clip's bound from self.epsilon, which the grader sets" \
        in lost(results)["8"]


def test_a_summed_loss_keeps_its_graph(tmp_path, monkeypatch):
    """Question 8's graph part asks whether backward gives the batch's loss gradient, at any
    scale: the loss value's parts are the ones a summed loss fails."""
    results = grade_in_process([("return self._loss(probs, targets), float(accuracy(probs, targets))",
                                 "return self._loss(probs, targets) * len(probs), float(accuracy(probs, targets))")],
                               tmp_path, monkeypatch)
    output = lost(results)["8"]
    assert "FAIL the loss value" in output and "FAIL the loss keeps its graph" not in output
    assert scores(results)["8"] == 2


def mutate(source: str, substitutions) -> str:
    for old, new in substitutions:
        assert source.count(old) == 1, old
        source = source.replace(old, new)
    return source


class InProcessSubmission:
    """``runner.Submission`` without its process: ``solution.py`` is imported into this one
    and the probe's own ops answer, requests and answers taking the pipe's round trip
    through ``torch.save`` and ``decode_answer``. For what the questions find in a
    submission; the process, its limits and the hidden answer key have tests of their own
    (the hostile submissions, the full marks of the exported and compat solutions)."""

    def __init__(self, source, memory_mb=None, allow_reference=False, as_user=None) -> None:
        self.source, self.solution = Path(source), None
        self.printed, self.output = 0, b""  # its prints reach this process's captured output
        self.init_ended = False  # an __init__ ending this process would end the tests' too

    @property
    def running(self) -> bool:
        return self.solution is not None

    def start(self, deadline: float) -> None:
        name = f"graded_{abs(hash(self.source))}"
        spec = importlib.util.spec_from_file_location(name, self.source)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # as an import would: dataclasses look their module up there
        spec.loader.exec_module(module)
        self.solution = module

    def call(self, request: dict, deadline: float, what: str) -> dict:
        request = decode_answer(encode(request)[HEADER.size:])
        return decode_answer(encode(answer(self.solution, request))[HEADER.size:])

    def stop(self) -> None:
        if self.solution is not None:
            sys.modules.pop(self.solution.__name__, None)
            self.solution = None


def grade_in_process(substitutions, tmp_path, monkeypatch) -> dict:
    """The exported solution with ``substitutions`` (``mutate``), graded in this process
    with ``MUTANT_EXAMPLES`` examples a part."""
    path = tmp_path / "solution.py"
    path.write_text(mutate(export_solution(tmp_path / "exported.py").read_text(), substitutions))
    monkeypatch.setattr(grader, "Submission", InProcessSubmission)
    monkeypatch.setattr(questions, "SETTINGS", settings(questions.SETTINGS, max_examples=MUTANT_EXAMPLES))
    return grade(path)


def lost(results) -> dict:
    """Each question that lost points: its output."""
    return {t["number"]: t["output"] for t in results["tests"] if t["score"] < t["max_score"]}


def test_each_mistake_loses_points_in_its_question_only(tmp_path, monkeypatch):
    source = export_solution(tmp_path / "exported.py").read_text()
    paths = {}
    for i, (name, (_, substitutions)) in enumerate(MUTANTS.items()):
        paths[name] = tmp_path / f"mutant{i}" / "solution.py"
        paths[name].parent.mkdir()
        paths[name].write_text(mutate(source, substitutions))
    # graded in this process: a process each would cost 13 starts of torch and torchvision
    monkeypatch.setattr(grader, "Submission", InProcessSubmission)
    # each mistake shows on any input, so a few examples a part find it (the correct parts'
    # full EXAMPLES: the full-marks tests)
    monkeypatch.setattr(questions, "SETTINGS", settings(questions.SETTINGS, max_examples=MUTANT_EXAMPLES))
    graded = {name: grade(path) for name, path in paths.items()}
    for name, (question, _) in MUTANTS.items():
        lost = {number: HOMEWORK_POINTS[number] - score
                for number, score in scores(graded[name]).items() if number != "0" and score < HOMEWORK_POINTS[number]}
        assert set(lost) == {question}, f"{name}: lost {lost}"


# Correct answers written otherwise than the reference: each keeps every point.
VARIANTS = {
    "an MLP module that registers its output layers first": [(
        "return mlp(input_dim, net_config, n_classes, activation)",
        "layers = list(mlp(input_dim, net_config, n_classes, activation))\n\n"
        "        class Net(torch.nn.Module):\n"
        "            def __init__(self):\n"
        "                super().__init__()\n"
        "                self.out = torch.nn.ModuleList(layers[-2:])\n"
        "                self.body = torch.nn.ModuleList(layers[:-2])\n\n"
        "            def forward(self, x):\n"
        "                for m in [*self.body, *self.out]:\n"
        "                    x = m(x)\n"
        "                return x\n\n"
        "        return Net()")],
    "an MLP calling its Linear layers' forward methods": [(
        "return mlp(input_dim, net_config, n_classes, activation)",
        "layers = list(mlp(input_dim, net_config, n_classes, activation))\n\n"
        "        class Net(torch.nn.Sequential):\n"
        "            def forward(self, x):\n"
        "                for m in self:\n"
        "                    x = m.forward(x) if isinstance(m, torch.nn.Linear) else m(x)\n"
        "                return x\n\n"
        "        return Net(*layers)")],
    "a CNN ending in Softmax() with its implicit dim": [(
        "return cnn(in_channels, net_config, n_classes, activation)",
        "return torch.nn.Sequential(*list(cnn(in_channels, net_config, n_classes, activation))[:-1],\n"
        "                                   torch.nn.Softmax())")],
    "zero_grad after the update": [(
        "        self.optimizer.step()\n        return norm",
        "        self.optimizer.step()\n        self.optimizer.zero_grad()\n        return norm")],
    # The questions on the Trainer's methods make it with the submission's own __init__.
    "a device that __init__ sets and the methods use": [(
        "        self.train_logs = {'train_accuracy': [], 'validation_accuracy': [], 'train_loss': [],\n",
        "        self.device = torch.device('cpu')\n"
        "        self.train_logs = {'train_accuracy': [], 'validation_accuracy': [], 'train_loss': [],\n"), (
        "        targets = self._targets(y, X, \"compute_loss_and_accuracy data\")\n",
        "        X, y = X.to(self.device), y.to(self.device)\n"
        "        targets = self._targets(y, X, \"compute_loss_and_accuracy data\")\n"), (
        "        targets = self._targets(y, X, \"evaluate data\")\n",
        "        X, y = X.to(self.device), y.to(self.device)\n"
        "        targets = self._targets(y, X, \"evaluate data\")\n")],
    "an MLP that flattens and takes the softmax in its forward": [(
        "return mlp(input_dim, net_config, n_classes, activation)",
        "layers = torch.nn.ModuleList(list(mlp(input_dim, net_config, n_classes, activation))[1:-1])\n\n"
        "        class Net(torch.nn.Module):\n"
        "            def __init__(self):\n"
        "                super().__init__()\n"
        "                self.layers = layers\n\n"
        "            def forward(self, x):\n"
        "                x = x.flatten(1)\n"
        "                for m in self.layers:\n"
        "                    x = m(x)\n"
        "                return torch.softmax(x, dim=1)\n\n"
        "        return Net()")],
    "a CNN with Identity in place of its last pool": [(
        "return cnn(in_channels, net_config, n_classes, activation)",
        "layers = list(cnn(in_channels, net_config, n_classes, activation))\n"
        "        at = max(i for i, m in enumerate(layers) if isinstance(m, torch.nn.Conv2d)) + 2\n"
        "        return torch.nn.Sequential(*layers[:at], torch.nn.Identity(), *layers[at:])")],
    "normalize written for 28 x 28 images": [(
        "        return _plain(normalize_splits(train, valid, test))",
        "        flat = [(X.reshape(-1, 784), y) for X, y in (train, valid, test)]\n"
        "        mean, std = flat[0][0].mean(0), flat[0][0].std(0)\n"
        "        return tuple((((X - mean) / std).reshape(-1, 1, 28, 28), y) for X, y in flat)")],
    "jacobian_norm with torch.autograd.functional.jacobian": [(
        "    return float(functional_jacobian_norm(function, input_tensor).detach())",
        "    return float(torch.linalg.vector_norm(torch.autograd.functional.jacobian(function, input_tensor)))")],
    # NumPy 2's float() refuses a shape-(1,) array; a one-element tensor of that shape is taken too
    "jacobian_norm returning a one-element NumPy array": [(
        "    return float(functional_jacobian_norm(function, input_tensor).detach())",
        "    return functional_jacobian_norm(function, input_tensor).detach().reshape(1).numpy()")],
}


@pytest.mark.filterwarnings("ignore:Implicit dimension choice for softmax")
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_correct_answers_written_otherwise_keep_every_point(variant, tmp_path, monkeypatch):
    results = grade_in_process(VARIANTS[variant], tmp_path, monkeypatch)
    assert results["score"] == 35, lost(results)


def test_an_exception_whose_message_cannot_be_printed_is_named_in_its_question_only(tmp_path, monkeypatch):
    results = grade_in_process([(
        "        return one_hot_labels(y, self.n_classes)",
        "        class Unprintable(Exception):\n"
        "            def __str__(self):\n"
        "                raise RuntimeError('no message')\n"
        "        raise Unprintable()")], tmp_path, monkeypatch)
    lost_points = lost(results)
    assert set(lost_points) == {"7"}
    assert "raised Unprintable: (its message could not be printed) (solution.py line" in lost_points["7"]


LOSS_LINE = "        return self._loss(probs, targets), float(accuracy(probs, targets))"
# One wrong value costs only the parts that check it: the other values of the answer still count.
PARTLY_WRONG = {
    "a loss without its graph (.item())": (
        [(LOSS_LINE, "        return self._loss(probs, targets).item(), float(accuracy(probs, targets))")],
        {"8": ["the loss keeps its graph"]}),
    "an accuracy per row, not averaged": (
        [(LOSS_LINE, "        return self._loss(probs, targets), (probs.argmax(1) == targets.argmax(1)).float()")],
        {"8": ["the accuracy"]}),
    "evaluate's values both wrong": (
        [("        return torch.tensor(loss, dtype=dtype, device=where.device), acc",
          "        return torch.tensor(2 * loss + 1, dtype=dtype, device=where.device), acc / 2 + 0.1")],
        {"11": ["the average loss over the whole set", "the accuracy over the whole set"]}),
}


@pytest.mark.parametrize("mistake", list(PARTLY_WRONG))
def test_a_wrong_value_costs_only_the_parts_that_check_it(mistake, tmp_path, monkeypatch):
    substitutions, failed = PARTLY_WRONG[mistake]
    results = grade_in_process(substitutions, tmp_path, monkeypatch)
    lost_parts = {number: [re.match(r"FAIL (.*) \(0/", line).group(1) for line in output.splitlines()
                           if line.startswith("FAIL")] for number, output in lost(results).items()}
    assert lost_parts == failed


def test_jacobian_norm_is_asked_only_of_outputs_with_entries():
    # differences of one entry is empty: the homework never asks for that Jacobian
    for part in QUESTIONS[1].parts:
        @settings(questions.SETTINGS, max_examples=200)
        @given(part.strategy)
        def check(case):
            x = questions.randn(case["seed"], case["shape"])
            assert TENSOR_FUNCTIONS[case["function"]](x).numel() > 0, case

        check()


INIT = "                 normalization: bool = True):\n"
FAILING_INITS = {
    "never ends": [(INIT, INIT + "        while True:\n            pass\n")],
    "changes torch's default dtype": [(INIT, INIT + "        torch.set_default_dtype(torch.float64)\n")],
    "has a metaclass that refuses attributes": [(
        "class Trainer:\n",
        "class Frozen(type):\n    def __setattr__(cls, name, value):\n        raise AttributeError(name)\n\n\n"
        "class Trainer(metaclass=Frozen):\n")],
}


@pytest.mark.parametrize("init", list(FAILING_INITS))
def test_an_init_that_fails_or_misbehaves_costs_no_point(init, tmp_path, monkeypatch):
    # questions 7-11 make the Trainer with the submission's own __init__ when it works
    monkeypatch.setattr(probe, "INIT_LIMIT_S", 1.0)
    results = grade_in_process(FAILING_INITS[init], tmp_path, monkeypatch)
    assert results["score"] == 35, lost(results)
    assert torch.get_default_dtype() == torch.float32


def test_a_fault_in_the_interface_check_costs_no_question(tmp_path, monkeypatch):
    def faulty(ask):
        raise KeyError(0)

    monkeypatch.setattr(grader, "interface_report", faulty)
    results = grade_in_process([], tmp_path, monkeypatch)
    assert results["score"] == 35, lost(results)
    (interface,) = [t for t in results["tests"] if t["number"] == "0"]
    assert interface["output"] == "The interface could not be read: the check could not run (KeyError: 0)"


def test_an_init_that_raises_slowly_runs_once_a_process(tmp_path, monkeypatch):
    count = tmp_path / "inits"
    monkeypatch.setattr(probe, "INIT_RETRY_S", 0.05)
    raises = [(INIT, INIT + f"        open({str(count)!r}, 'a').write('x')\n        import time\n"
                             "        time.sleep(0.1)\n        raise RuntimeError('no data')\n")]
    results = grade_in_process(raises, tmp_path, monkeypatch)
    assert results["score"] == 35, lost(results)
    assert count.read_text() == "x"


def test_an_init_that_raises_at_once_is_made_anew_for_each_request(tmp_path, monkeypatch):
    # what it derives from its arguments (n_classes differs between requests) and what a
    # request changes in it are each request's own
    raises = [(INIT, INIT + "        self.eye = torch.eye(n_classes)\n        raise RuntimeError('late bug')\n"),
              ("        return one_hot_labels(y, self.n_classes)",
               "        self.eye.add_(0.0)\n        self.seen = getattr(self, 'seen', 0) + 1\n"
               "        assert self.seen == 1, 'a Trainer reused'\n        return self.eye[y.long()]")]
    results = grade_in_process(raises, tmp_path, monkeypatch)
    assert results["score"] == 35, lost(results)


def test_a_note_forged_by_the_submission_is_cut_or_ignored(tmp_path, monkeypatch):
    # init_notes is a global of the submission's own process: it can put anything there
    forged = [(LOSS_LINE, "        import sys\n"
                          "        notes = (sys.modules.get('fn_trainer.app.grading.probe') or sys.modules['__main__']).init_notes\n"
                          "        notes += [5] if len(X) % 2 else ['n' * 100_000]\n"
                          "        return self._loss(probs, targets) + 1, float(accuracy(probs, targets))")]
    results = grade_in_process(forged, tmp_path, monkeypatch)
    failed = lost(results)
    assert set(failed) == {"8"} and len(failed["8"]) < grading_results.MAX_OUTPUT
    assert "FAIL the loss value" in failed["8"] and "FAIL probabilities clipped" in failed["8"]


USES_A_DEVICE = VARIANTS["a device that __init__ sets and the methods use"][1:]  # the methods' lines


def test_an_init_that_raises_keeps_what_it_set_before(tmp_path, monkeypatch):
    # the Trainer as far as its __init__ got: the device it set first is there for the methods
    raises_late = [(INIT, INIT + "        self.device = torch.device('cpu')\n"),
                   ("        self.train_logs = {", "        raise RuntimeError('not finished')\n        self.train_logs = {"),
                   *USES_A_DEVICE]
    results = grade_in_process(raises_late, tmp_path, monkeypatch)
    assert results["score"] == 35, lost(results)


def test_an_init_that_raises_is_named_where_the_methods_then_fail(tmp_path, monkeypatch):
    raises_first = [(INIT, INIT + "        raise RuntimeError('not finished')\n        self.device = 'cpu'\n"),
                    *USES_A_DEVICE]
    failed = lost(grade_in_process(raises_first, tmp_path, monkeypatch))
    assert failed and all(
        "Trainer.__init__ raised RuntimeError: not finished (solution.py line" in output and
        "so these methods ran on a Trainer whose __init__ stopped there" in output for output in failed.values())


HOSTILE = {
    "import error": "import torch\nimport no_such_module_anywhere\n",
    "an exception and an endless loop": (
        "import torch\nclass Trainer:\n    def one_hot(self, y):\n        while True:\n            pass\n"
        "def gradient_norm(f, *ts):\n    raise RuntimeError('not done')\n"),
    "os._exit": "import os, torch\ndef gradient_norm(f, *ts):\n    os._exit(0)\n",
    "megabytes of output": ("import sys, torch\nsys.stdout.write('x' * 3_000_000)\n"
                            "def gradient_norm(f, *ts):\n    print('y' * 1_000_000)\n    return 0.0\n"),
    # A daemon (double fork, new session) that overwrites the results with full marks.
    "leaves a daemon forging the results": (
        "import json, os, time\n"
        "def daemon(results, pid_file):\n"
        "    if os.fork():\n        return\n"
        "    os.setsid()\n"
        "    if os.fork():\n        os._exit(0)\n"
        "    open(pid_file, 'w').write(str(os.getpid()))\n"
        "    forged = json.dumps({'score': 35, 'execution_time': 0, 'output': 'forged', 'tests': []})\n"
        "    end = time.time() + 60\n"
        "    while time.time() < end:\n"
        "        try:\n"
        "            if 'forged' not in open(results).read():\n"
        "                open(results, 'w').write(forged)\n"
        "        except OSError:\n            pass\n"
        "        time.sleep(0.01)\n"
        "    os._exit(0)\n"
        "daemon(RESULTS, PID_FILE)\n"),
    # Fills the request pipe and stops reading it: the grader's next write would block.
    "stops reading its requests": (
        "import os, sys, time, torch\n"
        "def gradient_norm(f, *ts):\n"
        "    w = os.open(f'/proc/self/fd/{sys.argv[2]}', os.O_WRONLY | os.O_NONBLOCK)\n"
        "    try:\n        while True:\n            os.write(w, bytes(4096))\n"
        "    except BlockingIOError:\n        pass\n"
        "    sys.modules['__main__'].read_frame = lambda stream, limit: time.sleep(10 ** 6)\n"
        "    return 0.0\n"),
    "looks for the reference in its own process": (
        "import gc, sys, types\n"
        "LEAK = sorted({m for m in sys.modules if m.startswith('fn_trainer')} | {\n"
        "    o.__module__ for o in gc.get_objects()\n"
        "    if isinstance(o, types.FunctionType) and (o.__module__ or '').startswith('fn_trainer')})\n"
        "def gradient_norm(f, *ts):\n    raise RuntimeError(f'reference code found: {LEAK}')\n"),
    "imports the answer key": "from compat.solution import *\n",
    "imports the reference": "import torch\nfrom fn_trainer.core.diagnostics import gradient_norm\n",
}


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc")
def test_hostile_submissions_get_valid_results(tmp_path):
    paths, written = {}, {}
    pid_file = tmp_path / "daemon.pid"
    for i, (name, text) in enumerate(HOSTILE.items()):
        paths[name] = tmp_path / f"hostile{i}" / "solution.py"
        paths[name].parent.mkdir()
        written[name] = tmp_path / f"graded{i}" / "results.json"
        if name == "leaves a daemon forging the results":
            text = text.replace("RESULTS", repr(str(written[name]))).replace("PID_FILE", repr(str(pid_file)))
        paths[name].write_text(text)
    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda name: grade_to_file(paths[name], written[name], timeout=2), paths))
        daemon = int(pid_file.read_text())
        time.sleep(0.3)  # a daemon still alive rewrites its forgery within 10 ms
        graded = {name: json.loads(written[name].read_text()) for name in paths}
        daemon_left = Path(f"/proc/{daemon}").exists()  # not killed, or not reaped
    finally:
        if pid_file.exists() and Path(f"/proc/{pid_file.read_text()}").exists():
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
    for name, results in graded.items():
        assert_gradescope_format(results)
        json.dumps(results)
    outputs = {name: {t["number"]: t["output"] for t in r["tests"]} for name, r in graded.items()}
    assert graded["import error"]["score"] == 0
    assert "No module named 'no_such_module_anywhere'" in graded["import error"]["output"]
    looping = outputs["an exception and an endless loop"]
    assert "RuntimeError: not done" in looping["1"]
    assert "time limit" in looping["7"]
    assert "time limit" not in looping["1"]  # the next questions run in a fresh process
    assert "exited with status 0" in outputs["os._exit"]["1"]
    printed = int(re.search(r"printed (\d+) bytes", graded["megabytes of output"]["output"]).group(1))
    assert printed >= 4_000_000  # the import's 3 MB and at least one call's 1 MB, counted, not kept
    assert len(json.dumps(graded["megabytes of output"])) < 100_000
    assert graded["leaves a daemon forging the results"]["score"] == 0
    assert not daemon_left
    assert "stopped reading the grader's requests" in outputs["stops reading its requests"]["1"]
    assert "time limit" not in outputs["stops reading its requests"]["2"]
    assert "reference code found: []" in outputs["looks for the reference in its own process"]["1"]
    for name, module in (("imports the answer key", "compat"), ("imports the reference", "fn_trainer")):
        assert graded[name]["score"] == 0
        assert f"No module named '{module}': the grader's reference is not available" in graded[name]["output"]


def test_an_init_that_ends_its_process_costs_only_the_builder_it_ends_in(tmp_path):
    """os._exit in create_activation_function, which the Trainer's own __init__ calls: its
    question is lost, and the questions that make a Trainer ask again of a process that
    makes it without that __init__ (as for one that raises or runs too long)."""
    exported = export_solution(tmp_path / "exported.py").read_text()
    old = 'return activation_module(activation_str, "activation_str")'
    assert exported.count(old) == 1
    (tmp_path / "solution.py").write_text(exported.replace(old, "import os\n        os._exit(0)"))
    results = grade(tmp_path / "solution.py")
    assert set(lost(results)) == {"3"}, lost(results)
    assert "exited with status 0" in lost(results)["3"]


def deflated(frame: bytes) -> bytes:
    """``frame`` (an ``encode``d answer) with its zip records deflated."""
    compressed = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(frame[8:])) as original, zipfile.ZipFile(compressed, "w") as archive:
        for info in original.infolist():
            archive.writestr(info.filename, original.read(info), compress_type=zipfile.ZIP_DEFLATED)
    return compressed.getvalue()


def test_questions_left_when_the_time_budget_is_spent_are_not_graded(tmp_path):
    # every function and method loops forever: each question runs into its time limit
    submission = tmp_path / "solution.py"
    submission.write_text("import torch\n"
                          "def forever(*args, **kwargs):\n    while True:\n        pass\n"
                          "class Loops(type):\n    def __getattr__(cls, name):\n        return forever\n"
                          "class Trainer(metaclass=Loops):\n    pass\n"
                          "def __getattr__(name):\n    return forever\n")
    # each question runs into its 1 s limit and restarts the process (a second or more to
    # import torch): a budget of 12 s is spent well before the eleventh question
    start = time.monotonic()
    results = grade(submission, timeout=1, budget=12)
    elapsed = time.monotonic() - start
    assert_gradescope_format(results)
    outputs = {t["number"]: t["output"] for t in results["tests"]}
    skipped = [n for n, out in outputs.items()
               if out.startswith("not graded: the grading's time budget of 12 s was spent")]
    assert "time limit" in outputs["1"] and skipped[-1] == "11" and results["score"] == 0
    # no question starts after the budget; the one running then stops at its time limit
    assert elapsed < 12 + 1 + START_ALLOWANCE


def test_an_import_that_never_ends_is_named_and_stopped_within_the_budget(tmp_path):
    submission = tmp_path / "solution.py"
    submission.write_text("import time\ntime.sleep(1000)\n")
    start = time.monotonic()
    results = grade(submission, timeout=3, budget=6)  # the import's allowance would reach past the budget
    elapsed = time.monotonic() - start
    assert_gradescope_format(results)
    assert results["score"] == 0
    for test in results["tests"]:
        assert "time limit reached while importing solution.py" in test["output"], test["output"]
    assert elapsed < 6 + 5  # stopping the process and writing the results: a few seconds at most


def test_the_graders_own_time_between_calls_is_not_the_submissions(tmp_path, monkeypatch):
    """A grading machine slow enough to spend more than the time limit between its calls
    to the submission (the reference's answers, Hypothesis's examples) costs the student
    nothing: the limit counts the submission's own time."""
    first = QUESTIONS[0]
    waited = []
    real = grader.run_part

    def slow_grader(part, ask):
        if part not in first.parts:
            return real(part, ask)

        def ask_slowly(*args, **kwargs):
            time.sleep(0.3)
            waited.append(0.3)
            return ask(*args, **kwargs)

        return real(part, ask_slowly)

    monkeypatch.setattr(grader, "run_part", slow_grader)
    results = grade(export_solution(tmp_path / "solution.py"), timeout=2)
    question = next(t for t in results["tests"] if t["number"] == first.number)
    assert question["score"] == first.points, question["output"]
    assert sum(waited) > 2  # the grader alone outlasted the question's limit


def test_a_questions_time_limit_adds_up_the_submissions_calls(tmp_path):
    """Each call well inside the limit, together over it: the question stops at its limit."""
    exported = export_solution(tmp_path / "exported.py").read_text()
    submission = tmp_path / "solution.py"
    submission.write_text(exported + "\nimport time\n_norm = gradient_norm\n"
                          "def gradient_norm(*args):\n    time.sleep(0.7)\n    return _norm(*args)\n")
    results = grade(submission, timeout=1)
    question = next(t for t in results["tests"] if t["number"] == QUESTIONS[0].number)
    assert question["score"] == 0 and "time limit reached" in question["output"], question["output"]
    assert results["score"] >= TOTAL_POINTS - QUESTIONS[0].points - 1  # the other questions are not slowed


def test_answers_are_read_only_as_stored_records_within_the_limit():
    frame = encode({"value": torch.zeros(1000)})
    assert torch.equal(decode_answer(frame[8:])["value"], torch.zeros(1000))
    bomb = deflated(frame)  # 4 kB of zeros in a few bytes: at scale, gigabytes from a megabyte
    assert torch.equal(torch.load(io.BytesIO(bomb), weights_only=True)["value"], torch.zeros(1000))
    with pytest.raises(ValueError, match="compressed"):
        decode_answer(bomb)
    with pytest.raises(ValueError, match="over 4000 bytes"):
        decode_answer(frame[8:], limit=4000)
    nested: list = []
    for _ in range(40):  # a few hundred bytes that would print as 2**40 lists in the grader
        nested = [nested, nested]
    unfolding = encode({"error": nested})
    assert len(unfolding) < 10_000
    with pytest.raises(ValueError, match="^an answer of over 100000 nested values$"):
        decode_answer(unfolding[8:])
    shared: tuple = ()
    for _ in range(24):  # a set holds it as one value: unwalked, its repr is 2**24 tuples
        shared = (shared, shared)
    with pytest.raises(ValueError, match="^an answer of over 100000 nested values$"):
        decode_answer(encode({"value": {shared}})[8:])
    repeated = encode({"grads": {"1.weight": torch.zeros(1).expand(2**40)}})  # 2**40 elements in 4 bytes
    assert len(repeated) < 10_000
    with pytest.raises(ValueError, match=r"^an answer with a tensor of 1099511627776 elements over 4 bytes of "
                                         r"storage \(a view repeating its bytes\)$"):
        decode_answer(repeated[8:])
    view = torch.arange(12.0).reshape(3, 4)[:, 1]  # a view of part of its storage is an answer like any
    assert torch.equal(decode_answer(encode({"value": view})[8:])["value"], view)


FORGER = ("import json, os, torch\n"
          "forged = {'score': 35, 'execution_time': 0, 'output': 'forged', 'tests': []}\n"
          "for folder in ('.', '..', os.environ.get('HOME', '.')):\n"
          "    try:\n        open(os.path.join(folder, 'results.json'), 'w').write(json.dumps(forged))\n"
          "    except OSError:\n        pass\n")


# Written straight to the answer pipe when imported, ahead of the probe's own answer.
FORGED_ANSWER = ("import io, os, struct, sys, torch\n"
                 "sys.setrecursionlimit(20000)\n"
                 "ERROR\n"
                 "buffer = io.BytesIO()\n"
                 "torch.save({'error': error}, buffer)\n"
                 "os.write(int(sys.argv[3]), struct.pack('>Q', buffer.tell()) + buffer.getvalue())\n")


@pytest.mark.parametrize("error", [
    "error = []\nfor _ in range(3000):\n    error = [error]",  # str() of it overflows the stack
    "error = 5",
])
def test_a_forged_import_answer_scores_zero_with_the_reason(error, tmp_path):
    submission = tmp_path / "solution.py"
    submission.write_text(FORGED_ANSWER.replace("ERROR", error))
    results = grade(submission, timeout=10)
    assert_gradescope_format(results)
    assert results["score"] == 0
    assert "the submission's process sent something unreadable while importing solution.py" in results["output"]


def test_no_answer_of_the_graders_is_in_the_submissions_process(tmp_path):
    """A submission can reach anything in its own process: a compute_gradient_norm that
    takes the one the probe (``__main__``) once lent training_step finds none there."""
    source = export_solution(tmp_path / "exported.py").read_text()
    submission = tmp_path / "solution.py"
    submission.write_text(mutate(source, [(
        "        return float(global_norm(grads))\n",
        "        import __main__\n"
        "        return __main__.reference_gradient_norm(network)\n")]))
    results = grade(submission)
    assert lost(results).keys() == {"9", "10"}  # training_step's norm comes from it too
    assert "AttributeError: module '__main__' has no attribute 'reference_gradient_norm'" in lost(results)["9"]


def test_results_go_only_where_the_grader_writes_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a forged results.json in the grader's folder would land here too
    submission = tmp_path / "solution.py"
    submission.write_text(FORGER)
    target = tmp_path / "graded" / "results.json"
    assert main(["grade", str(submission), "--results", str(target), "--timeout", "5"]) == 0
    assert json.loads(target.read_text())["score"] == 0
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["graded", "results.json", "solution.py"]


@pytest.mark.parametrize("args, message", [
    ([], "either SUBMISSION.py or --bundle"),
    (["missing.py"], "SUBMISSION.py: 'missing.py' is not a file"),
    (["x.py", "--bundle", "a.zip"], "either SUBMISSION.py or --bundle"),
    (["{solution}", "--timeout", "0"], "--timeout must be a positive finite number, got 0.0"),
    (["{solution}", "--timeout", "inf"], "--timeout must be a positive finite number, got inf"),
    (["--bundle", "a.tar"], "--bundle must name a .zip file"),
    (["{solution_copy}", "--results", "{solution_copy}"], "is the submission itself: give the results another path"),
])
def test_bad_grade_arguments_fail_with_one_line(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    copy = tmp_path / "solution.py"
    copy.write_text("def gradient_norm(*args):\n    return 0.0\n")
    assert main(["grade", *[a.format(solution=SOLUTION, solution_copy=copy) for a in args]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fn-trainer: error: ") and message in err and err.count("\n") == 1
    assert copy.read_text() == "def gradient_norm(*args):\n    return 0.0\n"  # the submission is as it was


@pytest.mark.parametrize("timeout", [0, -1.0, float("inf"), float("nan")])
def test_grade_refuses_a_timeout_that_is_not_a_positive_finite_number(timeout):
    with pytest.raises(ValueError, match="timeout must be a positive finite number"):
        grade(SOLUTION, timeout=timeout)


def test_bundle_grades_a_fake_autograder_tree(tmp_path):
    bundle = write_bundle(tmp_path / "autograder.zip")
    source = tmp_path / "autograder" / "source"
    with zipfile.ZipFile(bundle) as archive:
        archive.extractall(source)
        for info in archive.infolist():  # extractall drops the modes
            os.chmod(source / info.filename, info.external_attr >> 16 & 0o777)
    assert "pip install" in (source / "setup.sh").read_text()
    assert (source / "fn-trainer" / "pyproject.toml").is_file()
    submission = tmp_path / "autograder" / "submission" / "solution.py"
    submission.parent.mkdir()
    submission.write_text("import torch\ndef gradient_norm(function, *tensors):\n"
                          "    return 0.0\n")
    env = {**os.environ, "AUTOGRADER_ROOT": str(tmp_path / "autograder"), "AUTOGRADER_PYTHON": sys.executable}
    run = subprocess.run([str(source / "run_autograder")], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    results = json.loads((tmp_path / "autograder" / "results" / "results.json").read_text())
    assert_gradescope_format(results)
    assert results["score"] == 0 and "gradient_norm" in results["tests"][1]["output"]


@pytest.mark.parametrize("uploaded, found", [
    (["hw3/solution.py"], None), (["my\nhw/solution.py"], None), (["hw3/solution.py", "hw3/link/solution.py"], None),
    (["solution (1).py"], "No solution.py was found in the submission (it holds: solution (1).py)"),
    (["hw3/solution.py", "hw3/old/solution.py"], "Several files named solution.py were found in the submission (it "
                                                 "holds: hw3/old/solution.py, hw3/solution.py)"),
])
def test_bundle_grades_the_one_solution_in_a_folder_and_lists_the_upload_otherwise(uploaded, found, tmp_path):
    bundle = write_bundle(tmp_path / "autograder.zip")
    source = tmp_path / "autograder" / "source"
    with zipfile.ZipFile(bundle) as archive:
        archive.extractall(source)
    for name in uploaded:
        submitted = tmp_path / "autograder" / "submission" / name
        submitted.parent.mkdir(parents=True, exist_ok=True)
        if name.startswith("hw3/link/"):  # a dangling link is no file to grade
            submitted.symlink_to(tmp_path / "nowhere" / "solution.py")
        else:
            submitted.write_text("import torch\n")
    env = {**os.environ, "AUTOGRADER_ROOT": str(tmp_path / "autograder"), "AUTOGRADER_PYTHON": sys.executable}
    run = subprocess.run(["bash", str(source / "run_autograder")], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    results = json.loads((tmp_path / "autograder" / "results" / "results.json").read_text())
    if found is None:  # graded: the interface test names what the file lacks
        assert_gradescope_format(results)
        assert "gradient_norm is missing" in results["tests"][0]["output"]
    else:
        assert results["score"] == 0 and results["output"] == f"{found}: upload one file named solution.py."


def test_bundle_installs_into_a_virtual_environment_that_grading_then_uses(tmp_path):
    # a python3 that records what it is asked: the install itself would fetch torch
    bundle = write_bundle(tmp_path / "autograder.zip")
    root, bin_dir, log = tmp_path / "autograder", tmp_path / "bin", tmp_path / "calls.log"
    source = root / "source"
    with zipfile.ZipFile(bundle) as archive:
        archive.extractall(source)
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(
        "#!/bin/bash\n"
        f"echo \"python3 $*\" >> {log}\n"
        "if [ \"$1 $2\" = \"-m venv\" ]; then\n"
        "    mkdir -p \"$4/bin\"\n"
        f"    printf '#!/bin/bash\\necho \"venv python $*\" >> {log}\\n' > \"$4/bin/python\"\n"
        "    chmod +x \"$4/bin/python\"\n"
        "fi\n")
    (bin_dir / "python3").chmod(0o755)
    env = {**os.environ, "AUTOGRADER_ROOT": str(root), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    setup = subprocess.run(["bash", str(source / "setup.sh")], env=env, capture_output=True, text=True, timeout=60)
    assert setup.returncode == 0, setup.stderr
    assert log.read_text().splitlines() == [f"python3 -m venv --clear {root}/venv",
                                            "venv python -m pip install --no-cache-dir ./fn-trainer[grade]"]
    # run_autograder grades with that environment's python when AUTOGRADER_PYTHON is not set
    (root / "venv" / "bin" / "python").write_text(f"#!/bin/bash\nexec {sys.executable} \"$@\"\n")
    (root / "submission").mkdir()
    (root / "submission" / "solution.py").write_text("import torch\n")
    run = subprocess.run(["bash", str(source / "run_autograder")], env={**os.environ, "AUTOGRADER_ROOT": str(root)},
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    results = json.loads((root / "results" / "results.json").read_text())
    assert_gradescope_format(results)
    assert "gradient_norm is missing" in results["tests"][0]["output"]


@pytest.mark.parametrize("forgery", ["file", "folder"])
def test_bundle_scores_0_when_the_submission_forges_results_and_kills_the_grader(forgery, tmp_path):
    bundle = write_bundle(tmp_path / "autograder.zip")
    source = tmp_path / "autograder" / "source"
    with zipfile.ZipFile(bundle) as archive:
        archive.extractall(source)
    results = tmp_path / "autograder" / "results" / "results.json"
    submission = tmp_path / "autograder" / "submission" / "solution.py"
    submission.parent.mkdir()
    # run as the grader's user and child: it can write the results and kill the grader
    forge = (f"open({str(results)!r}, 'w').write(json.dumps({{'score': 35, 'tests': []}}))" if forgery == "file"
             else f"os.makedirs({str(results / 'x')!r})")  # a folder the fallback's write must not land in
    submission.write_text(f"import json, os, signal\n{forge}\nos.kill(os.getppid(), signal.SIGKILL)\n")
    # TMPDIR: the killed grader leaves its working folder behind, here rather than in /tmp
    env = {**os.environ, "AUTOGRADER_ROOT": str(tmp_path / "autograder"), "AUTOGRADER_PYTHON": sys.executable,
           "TMPDIR": str(tmp_path)}
    run = subprocess.run(["bash", str(source / "run_autograder")], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    written = json.loads(results.read_text())
    assert written["score"] == 0 and written["tests"] == []
    assert written["output"].startswith("The autograder stopped before it finished grading (exit status 137)")


# appends to run_autograder, at the point bash has read it to, a line writing full marks: bash
# reads a script as it goes, so it would run once the grader is done
SCRIPT_EDITOR = """import os
grader = os.getppid()
shell = int(open(f"/proc/{grader}/stat").read().rsplit(")", 1)[1].split()[1])
script = os.readlink(f"/proc/{shell}/fd/255")
at = int(open(f"/proc/{shell}/fdinfo/255").read().split()[1])
results = os.path.join(os.path.dirname(os.path.dirname(script)), "results", "results.json")
with open(script, "r+b") as f:
    f.seek(at)
    f.write(f"\\necho '{{\\"score\\": 35, \\"tests\\": []}}' > {results}\\nexit 0\\n".encode())
    f.truncate()
"""


def test_bundle_runs_nothing_a_submission_writes_into_run_autograder(tmp_path):
    bundle = write_bundle(tmp_path / "autograder.zip")
    source = tmp_path / "autograder" / "source"
    with zipfile.ZipFile(bundle) as archive:
        archive.extractall(source)
    submission = tmp_path / "autograder" / "submission" / "solution.py"
    submission.parent.mkdir()
    submission.write_text(SCRIPT_EDITOR)
    env = {**os.environ, "AUTOGRADER_ROOT": str(tmp_path / "autograder"), "AUTOGRADER_PYTHON": sys.executable}
    run = subprocess.run(["bash", str(source / "run_autograder")], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    assert "score\": 35" in (source / "run_autograder").read_text()  # the edit happened, and did nothing:
    results = json.loads((tmp_path / "autograder" / "results" / "results.json").read_text())
    assert_gradescope_format(results)
    assert results["score"] == 0 and "gradient_norm is missing" in results["tests"][0]["output"]


def interpreter_for(account: str, folder: Path) -> Optional[str]:
    """A Python of this version that ``account`` can run, finding this environment's packages
    (``folder`` must be open to it): this one, or a virtual environment made in ``folder``
    from the system's interpreter of this version with a ``.pth`` to them; ``None`` if none."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    site = sysconfig.get_paths()["purelib"]
    for base in (sys.executable, f"/usr/bin/python{version}"):
        venv = folder / f"venv{len(list(folder.iterdir()))}"
        made = subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], capture_output=True)
        python = venv / "bin" / "python"
        if made.returncode != 0 or not python.exists():
            continue
        (venv / "lib" / f"python{version}" / "site-packages" / "environment.pth").write_text(site + "\n")
        try:
            works = subprocess.run([str(python), "-I", "-c", "import torch"], user=account, capture_output=True,
                                   cwd=folder).returncode == 0
        except PermissionError:  # its interpreter lies where the account cannot reach
            works = False
        if works:
            return str(python)
    return None


PRYING = """import os, signal
tried = []
for what, attempt in (("kill", lambda: os.kill(os.getppid(), signal.SIGKILL)),
                      ("write", lambda: open(GRADERS_FILE, "a").write("planted")),
                      ("environ", lambda: open(f"/proc/{os.getppid()}/environ").read())):
    try:
        attempt()
        tried.append(f"{what}: done")
    except OSError as e:
        tried.append(f"{what}: {e.strerror}")
print("; ".join(tried))
"""


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="switching accounts needs root")
def test_a_submission_run_as_another_account_changes_nothing_of_the_graders(tmp_path):
    import pwd

    try:
        pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no account named nobody")
    # open to nobody, unlike tmp_path (or a TMPDIR of mode 0700): in /tmp where there is one
    folder = Path(tempfile.mkdtemp(prefix="fn-trainer-test-", dir="/tmp" if os.path.isdir("/tmp") else None))
    try:
        folder.chmod(0o755)
        python = interpreter_for("nobody", folder)
        if python is None:
            pytest.skip("no Python of this version that the account nobody can run")
        graders_file = folder / "grader.py"  # the grader's code, say, or its results
        graders_file.write_text("unchanged")
        (folder / "solution.py").write_text(PRYING.replace("GRADERS_FILE", repr(str(graders_file))))
        export_solution(folder / "good.py")
        env = {**os.environ, "PYTHONPATH": str(Path(grader.__file__).parents[3])}
        for name, score in (("good.py", TOTAL_POINTS), ("solution.py", 0)):
            run = subprocess.run([python, "-m", "fn_trainer", "grade", name, "--results", f"{name}.json",
                                  "--as-user", "nobody"], cwd=folder, env=env, capture_output=True, text=True,
                                 timeout=600)
            assert run.returncode == 0, run.stderr
            results = json.loads((folder / f"{name}.json").read_text())
            assert_gradescope_format(results)
            assert results["score"] == score, results["output"]
        assert "kill: Operation not permitted; write: Permission denied; environ: Permission denied" in results["output"]
        assert graders_file.read_text() == "unchanged"
    finally:
        shutil.rmtree(folder)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="switching accounts needs root")
def test_an_account_that_cannot_run_this_python_is_refused_before_grading(tmp_path, capsys, monkeypatch):
    import pwd

    try:
        pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no account named nobody")
    try:
        runs = subprocess.run([sys.executable, "-I", "-c", "import torch"], user="nobody", cwd="/",
                              capture_output=True).returncode == 0
    except PermissionError:
        runs = False
    if runs:
        pytest.skip("the account nobody can run this Python")
    graded = []
    monkeypatch.setattr(grader, "grade", lambda *a, **k: graded.append(a))
    results = tmp_path / "r.json"
    assert main(["grade", str(SOLUTION), "--results", str(results), "--as-user", "nobody"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fn-trainer: error: --as-user: the account 'nobody' cannot run this Python "
                          f"({sys.executable}) with torch: ") and err.count("\n") == 1
    assert not graded and not results.exists()


@pytest.mark.parametrize("account, match", [
    ("no-such-account-here", "^--as-user: there is no account named 'no-such-account-here'$"),
    ("root", "^--as-user: 'root' is root's account, under which the submission could change anything$"),
])
def test_an_account_the_submission_cannot_run_as_is_refused_before_grading(account, match, tmp_path,
                                                                           monkeypatch, capsys):
    graded = []
    monkeypatch.setattr(grader, "grade", lambda *a, **k: graded.append(a))
    assert main(["grade", str(SOLUTION), "--results", str(tmp_path / "r.json"), "--as-user", account]) == 2
    err = capsys.readouterr().err
    assert re.search(match.replace("^", "^fn-trainer: error: "), err.strip()) and not graded


def test_results_that_cannot_be_written_are_refused_before_grading(tmp_path, monkeypatch, capsys):
    graded = []
    monkeypatch.setattr(grader, "grade", lambda *a, **k: graded.append(a))
    (tmp_path / "results.json").mkdir()
    assert main(["grade", str(SOLUTION), "--results", str(tmp_path / "results.json")]) == 2
    err = capsys.readouterr().err
    assert f"results file '{tmp_path / 'results.json'}' is a folder, not a file that can be written" in err
    assert err.count("\n") == 1 and not graded


def test_the_summary_gives_a_reason_repeated_from_the_part_before_in_a_few_words():
    tests = [grading_results.TestResult("1", "a", 0.0, 2.0, "FAIL x (0/1): import failed\nFAIL y (0/1): import failed"),
             grading_results.TestResult("2", "b", 1.0, 2.0, "FAIL z (0/1): import failed\nPASS w (1/1)"),
             grading_results.TestResult("3", "c", 0.0, 1.0, "FAIL v (0/1): another reason")]
    text = grading_results.summary(grading_results.results_json(tests, 1.0, ""))
    assert text.splitlines()[1:7] == ["       FAIL x (0/1): import failed", "       FAIL y (0/1): the same reason as above",
                                      "  2. b                            1/2",
                                      "       FAIL z (0/1): the same reason as above",
                                      "  3. c                            0/1", "       FAIL v (0/1): another reason"]


def test_results_replace_what_utf8_cannot_encode(tmp_path):
    # a submission's error message can hold a lone surrogate: raise ValueError("\ud800")
    results = grading_results.results_json(
        [grading_results.TestResult("1", "gradient_norm", 0.0, 3.0, "ValueError: \ud800")], 1.0, "\udcff")
    grading_results.write_results(tmp_path / "results.json", results)
    written = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert written["tests"][0]["output"] == "ValueError: ?" and written["output"] == "?"
    assert "ValueError: ?" in grading_results.summary(results)


def test_results_cut_an_output_of_any_size(tmp_path):
    long = "x" * (10 * grading_results.MAX_OUTPUT)
    results = grading_results.results_json([grading_results.TestResult("7", "one_hot", 0.0, 2.0, long)], 1.0, long)
    for text in (results["output"], results["tests"][0]["output"]):
        assert text.startswith("x" * grading_results.MAX_OUTPUT) and len(text) < grading_results.MAX_OUTPUT + 100
        assert text.endswith(f"({9 * grading_results.MAX_OUTPUT} more characters left out)")


def test_messages_name_the_first_error_and_no_huge_answer(tmp_path, monkeypatch):
    results = grade_in_process([
        ("        return torch.tensor(loss, dtype=dtype, device=where.device), acc\n",
         "        return torch.tensor(loss, dtype=dtype, device=where.device), acuracy\n"),
        ("    def one_hot(self, y: torch.Tensor) -> torch.Tensor:\n",
         "    def one_hot(self, y: torch.Tensor) -> torch.Tensor:\n        return torch.zeros(100_000)\n")],
        tmp_path, monkeypatch)
    outputs = {t["number"]: t["output"] for t in results["tests"]}
    # the one-hot call's error, not the one of the retry with labels
    assert "raised NameError: name 'acuracy' is not defined (solution.py line" in outputs["11"]
    assert "acuracy); with integer labels instead: NameError" in outputs["11"]
    assert "returned a tensor of shape (100000,), expected (4, 5)" in outputs["7"] and len(outputs["7"]) < 1000


def test_each_part_of_a_question_shows_however_long_another_parts_reason_is():
    def huge(ask, case):
        raise questions.Mismatch("x" * 100_000)

    class Quiet:
        fatal = broken = note = None
        ask = None

        def begin(self):
            pass

    question = questions.Question("4", "t", [questions.Part("long", 1, st.just(0), huge),
                                             questions.Part("short", 2, st.just(0), lambda ask, case: None)])
    result = grader.grade_question(question, Quiet())
    assert result.score == 2 and len(result.output) < grading_results.MAX_OUTPUT
    assert result.output.endswith("PASS short (2/2)")


def test_an_identity_subclass_with_a_forward_of_its_own_is_no_identity():
    class Doubling(torch.nn.Identity):
        def forward(self, x):
            return 2 * x

    class Named(torch.nn.Identity):
        pass

    assert describe_layer(torch.nn.Identity()) == describe_layer(Named()) == "Identity()"
    assert describe_layer(Doubling()) == "Doubling (not one of the torch.nn layers the homework names)"


def test_the_init_time_limit_never_escapes_nor_leaves_its_changes(monkeypatch):
    # __init__ calls that end about when the alarm fires: it may reach the clean-up itself
    monkeypatch.setattr(probe, "INIT_LIMIT_S", 0.001)
    ends = iter(random.Random(0).uniform(0.00093, 0.00100) for _ in range(3000))

    class Trainer:
        @staticmethod
        def load_dataset(datapath):
            raise AssertionError("the tiny splits are given instead")

        def __init__(self, **options):
            torch.set_default_dtype(torch.float64)
            self.load_dataset("./data")
            until = time.perf_counter() + next(ends)
            while time.perf_counter() < until:
                pass

    own = Trainer.__dict__["load_dataset"]
    for _ in range(3000):
        probe.own_init(Trainer, "mlp", 10, 1e-4, 128)
        assert torch.get_default_dtype() == torch.float32 and Trainer.__dict__["load_dataset"] is own


def test_an_error_already_described_is_not_cut():
    assert probe.describe_error(probe.Described("x" * 1000)) == "x" * 1000


def as_written(expected) -> tuple:
    """A spec entry's parameters as ``interface.py`` writes them: ``name``, ``name=default``, ``*name``."""
    plain = tuple(p + (f"={expected.defaults[p]}" if p in expected.defaults else "") for p in expected.params)
    return plain + ((f"*{expected.star}",) if expected.star else ())


def test_interface_data_agrees_with_the_spec():
    ours = {**FUNCTIONS, **{f"Trainer.{name}": m for name, m in TRAINER_METHODS.items()}}
    assert {name: (as_written(e), e.static) for name, e in read_spec(SPEC).items()} == {
        name: (m.params, m.static) for name, m in ours.items()}
    fields = re.search(r"fields in this order, each `Tuple\[int, \.\.\.\]`:\s*(.*?)\.\n", SPEC.read_text(), re.S).group(1)
    assert dict(re.findall(r"`(\w+)=(\([\d, ]*\))`", fields)) == {k: repr(v) for k, v in NETWORK_CONFIGURATION_FIELDS.items()}


def test_interface_differences_are_reported_by_name():
    reported = {name: {"params": list(m.params), "static": m.static} for name, m in TRAINER_METHODS.items()}
    reported["test_equivariance"] = {"params": ["self", "out_dir=None"], "static": False}
    reported["normalize"] = {"params": ["self", "train", "valid", "test"], "static": False}
    del reported["evaluate"]
    found = {"functions": {n: {"params": list(f.params), "static": False} for n, f in FUNCTIONS.items()},
             "trainer": reported, "config": {k: repr(v) for k, v in NETWORK_CONFIGURATION_FIELDS.items()}}
    assert differences(found) == [
        "Trainer.evaluate is missing",
        "Trainer.normalize takes (self, train, valid, test); the template has (train, valid, test)",
        "Trainer.normalize is not a @staticmethod; in the template it is",
        "Trainer.test_equivariance takes (self, out_dir=None); the template has (self)",
    ]


def test_the_submission_runs_isolated_without_bytecode_and_its_prints_are_shown(tmp_path):
    """Its process is killed when grading ends: an unbuffered print still reaches the results."""
    submission = tmp_path / "solution.py"
    submission.write_text("import sys\nprint('printed at import')\ndef gradient_norm(function, *tensors):\n"
                          "    raise RuntimeError(f'flags {sys.flags.isolated} {sys.flags.dont_write_bytecode}')\n")
    results = grade(submission, timeout=5)
    assert "flags 1 1" in results["tests"][1]["output"] and results["score"] == 0
    assert "printed at import" in results["output"]


def test_gradients_at_a_positive_scale_are_parallel_and_others_are_not():
    g = torch.Generator().manual_seed(0)
    want = {"w": torch.randn(4, 5, generator=g), "b": torch.randn(4, generator=g)}
    flat = torch.cat([v.flatten() for v in want.values()])
    across = torch.randn(flat.shape, generator=g)
    across -= torch.dot(across, flat) / torch.dot(flat, flat) * flat  # orthogonal to the gradient

    def scaled(factor, off=0.0):
        moved = flat * factor + off * across / across.norm() * flat.norm()
        return {"w": moved[:20].reshape(4, 5), "b": moved[20:]}

    assert questions.parallel(scaled(1.0), want) and questions.parallel(scaled(128.0), want)  # a summed loss
    assert not questions.parallel(scaled(-1.0), want)
    assert not questions.parallel(scaled(1.0, off=0.005), want)  # 0.5% off its direction
    assert not questions.parallel(scaled(0.0), want)
    assert not questions.parallel({"w": torch.full((4, 5), float("inf")), "b": want["b"]}, want)
