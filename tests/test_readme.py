"""The README's Python examples run as written and print what they say."""
import math
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
# a printed number, or the words Python prints for a non-finite float
NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d+(?:\.\d*)?(?:e[-+]?\d+)?|nan|inf)(?![\w.])")


def run_example(source: str, capsys) -> tuple[dict, str]:
    """The block's namespace after running it, and what it printed."""
    namespace = {"__name__": "readme_example"}
    exec(compile(source, str(README), "exec"), namespace)
    return namespace, capsys.readouterr().out


def test_readme_has_examples():
    assert BLOCKS


@pytest.mark.parametrize("source", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs_and_prints_finite_numbers(source, capsys):
    _, out = run_example(source, capsys)
    numbers = [float(n) for n in NUMBER.findall(out)]
    assert numbers and all(math.isfinite(v) for v in numbers), out


def test_first_example_prints_the_parameter_count_and_finite_losses(capsys):
    namespace, out = run_example(BLOCKS[0], capsys)
    assert out.splitlines()[0] == "269322" == str(sum(p.numel() for p in namespace["params"].values()))
    assert math.isfinite(float(namespace["metrics"]["loss"]))
    logs = namespace["result"].logs
    for key in ("train_loss", "validation_loss"):  # before training, then after each of 2 epochs
        assert len(logs[key]) == 1 + 2 and all(math.isfinite(v) for v in logs[key]), key
