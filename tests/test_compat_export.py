"""``export_solution``: the single-file ``solution.py`` graders receive."""
import ast
import importlib.util
import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
from template_spec import SPEC

from fn_trainer.app import export
from fn_trainer.app.export import export_solution

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
ALLOWED = set(sys.stdlib_module_names) | {"torch", "torchvision", "numpy", "tqdm", "__future__"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    return export_solution(tmp_path_factory.mktemp("export") / "solution.py")


def load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_time_imports(source: str):
    """Root names of the modules ``source`` imports when it is loaded (not in functions)."""
    roots = set()
    for node in export.load_time_nodes(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level:
            roots.add(node.module.split(".")[0])
    return roots


def embedded_sources(text: str):
    for node in ast.parse(text).body:
        if isinstance(node, ast.Assign) and node.targets[0].id == "_EMBEDDED_SOURCES":
            return ast.literal_eval(node.value)
    raise AssertionError("no _EMBEDDED_SOURCES in the exported file")


def test_exported_file_imports_only_the_template_libraries(exported):
    text = exported.read_text()
    package = ast.literal_eval(text.split("_EMBEDDED_PACKAGE = ", 1)[1].split("\n", 1)[0])
    assert package.startswith("_fn_trainer_")
    assert load_time_imports(text) <= ALLOWED | {package}
    sources = embedded_sources(text)
    assert {f"core.{name}" for name in ("losses", "optim", "networks", "diagnostics", "data")} <= set(sources)
    # the application and the speed layer stay out: compat never compiles, plots or grades
    assert not [name for name in sources if name.split(".")[0] not in ("core", "training")]
    for name, source in sources.items():
        assert source == (ROOT / "fn_trainer" / (name.replace(".", "/") + ".py")).read_text(), name
        assert load_time_imports(source) <= ALLOWED, name
    assert "import fn_trainer" not in text and "from fn_trainer" not in text.split("# ---- end", 1)[1]


def test_export_is_deterministic_and_keeps_the_docstring_first(exported, tmp_path):
    again = export_solution(tmp_path / "deep" / "folder" / "solution.py")
    assert again.read_text() == exported.read_text()
    assert ast.get_docstring(ast.parse(exported.read_text())).startswith("Homework 3")


def test_exported_module_uses_its_private_copy(exported):
    solution = load(exported, "exported_solution")
    assert solution.NetworkConfiguration.__module__ == "exported_solution"  # the template's class is the file's
    from fn_trainer.core.config import NetworkConfiguration
    assert solution.NetworkConfiguration is not NetworkConfiguration
    assert solution.Trainer.create_mlp.__module__ == "exported_solution"
    try:  # tracebacks through the embedded code show its lines
        solution.Trainer.create_activation_function("gelu")
    except ValueError:
        text = traceback.format_exc()
    assert "fn_trainer/core/networks.py" in text and "raise ValueError(" in text


def test_a_configuration_pickled_with_the_exported_file_loads_in_a_fresh_process(exported, tmp_path):
    """Pickle imports a class's module by itself: the file's, not the embedded package, which a
    fresh process has only once the file has run."""
    env = {**os.environ, "PYTHONPATH": str(exported.parent)}
    saved = tmp_path / "config.pkl"
    subprocess.run([sys.executable, "-c", "import pickle, solution; pickle.dump(solution.NetworkConfiguration("
                    f"dense_hiddens=(64,) * 5), open({str(saved)!r}, 'wb'))"], env=env, check=True, timeout=300)
    loaded = subprocess.run([sys.executable, "-c", f"import pickle; print(pickle.load(open({str(saved)!r}, 'rb')))"],
                            env=env, capture_output=True, text=True, timeout=300)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert "dense_hiddens=(64, 64, 64, 64, 64)" in loaded.stdout


def test_a_second_load_of_the_file_leaves_the_first_ones_configurations_picklable(exported, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(exported.parent)}
    code = ("import pickle, runpy, solution\n"
            "runpy.run_path(solution.__file__, run_name='grader_copy')\n"
            "print(type(pickle.loads(pickle.dumps(solution.NetworkConfiguration()))).__module__)")
    second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    assert second.stdout.split() == ["solution"]


def test_exported_file_passes_the_compat_suite_without_fn_trainer(exported):
    """The compat suite, in a fresh interpreter where fn_trainer and compat cannot be imported."""
    env = {**os.environ, "FN_TRAINER_SOLUTION": str(exported)}
    result = subprocess.run(
        [sys.executable, str(TESTS / "compat_blocker.py"), "-x", "-v", "-rs", "-p", "no:cacheprovider",
         "-m", "not realdata", str(TESTS / "test_compat.py")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    assert "test_exported_solution_runs_without_fn_trainer PASSED" in output, output[-5000:]
    # the whole suite ran: only the tests of the template's specification skip, where it is not
    # beside the repository (../shared)
    skipped = [line for line in output.splitlines() if line.startswith("SKIPPED")]
    assert all("interface specification is not at" in line for line in skipped) and not (skipped and SPEC.is_file()), \
        output[-5000:]


@pytest.mark.parametrize("name", ["solution.txt", "solution"])
def test_out_path_must_be_a_python_file(tmp_path, name):
    with pytest.raises(ValueError, match=r"\.py file"):
        export_solution(tmp_path / name)


def test_out_path_must_not_be_a_folder(tmp_path):
    (tmp_path / "solution.py").mkdir()
    with pytest.raises(ValueError, match="is a folder"):
        export_solution(tmp_path / "solution.py")


def test_modules_with_other_load_time_imports_are_refused():
    with pytest.raises(ValueError, match="matplotlib"):
        export.check_imports("fn_trainer/app/plots.py", "import numpy\nimport matplotlib.pyplot as plt\n", "app.plots", {})
    lazy = "import torch\n\ndef plot():\n    import matplotlib.pyplot as plt\n"
    export.check_imports("fn_trainer/app/plots.py", lazy, "app.plots", {})  # imported only when plot() runs


@pytest.mark.parametrize("line", ["from fn_trainer import one_hot", "from fn_trainer.speed import inductor_apply",
                                  "import fn_trainer.core"])
def test_a_package_cannot_be_embedded(line):
    with pytest.raises(ValueError, match="not 'fn_trainer"):
        export.needed_modules(line + "\n")


def test_relative_imports_are_followed_across_subpackages():
    # losses imports .checks; fit imports ..core.* and .checkpoint
    assert export.needed_modules("from fn_trainer.core.losses import one_hot\n") == ["core.checks", "core.losses"]
    assert {"core.step", "training.checkpoint", "training.loop"} <= set(export.needed_modules("from fn_trainer.training.fit import fit\n"))
