"""Repository promises: CI runs exactly the README's test command; the pack never imports comfy in the core."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"# 2\. install, then run the tests\n(.+)\n", readme).group(1).strip()
    assert command in (ROOT / ".ci" / "run").read_text().splitlines()


def test_core_never_imports_comfy():
    for path in (ROOT / "dreamrelation_core").rglob("*.py"):
        assert not re.search(r"^\s*(from|import)\s+comfy", path.read_text(), re.M), path


def test_example_config_lists_every_key():
    """README: configs/relation.yaml lists every config key (with its default, unless a comment says otherwise)."""
    import dataclasses

    import yaml

    from dreamrelation_core.config import RunConfig, load_config

    def keys(cls, prefix=""):
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if dataclasses.is_dataclass(default):
                yield from keys(type(default), f"{prefix}{f.name}.")
            else:
                yield prefix + f.name

    def listed(values, prefix=""):
        for name, value in values.items():
            if isinstance(value, dict) and name not in ("ranks", "alphas", "extra_targets"):
                yield from listed(value, f"{prefix}{name}.")
            else:
                yield prefix + name

    path = ROOT / "configs" / "relation.yaml"
    assert sorted(listed(yaml.safe_load(path.read_text()))) == sorted(keys(RunConfig))
    load_config(path)                                                       # and it is a valid config


def test_the_pack_has_one_workflow_template_folder():
    """ComfyUI serves the templates of a pack from the first of these folders that exists, while it lists the JSON
    files of all of them: a second folder (a YAML `examples/`, say) makes every listed template a 404."""
    folders = [name for name in ("example_workflows", "example", "examples", "workflow", "workflows")
               if (ROOT / name).is_dir()]
    assert folders == ["workflows"]


def _requirements(path: Path) -> list[str]:
    lines = [l.split("#")[0].strip() for l in path.read_text().splitlines()]
    return [l for l in lines if l and not l.startswith("-r ")]


def test_pyproject_and_requirements_files_agree():
    tomllib = pytest.importorskip("tomllib")      # Python 3.11+

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert sorted(project["dependencies"]) == sorted(_requirements(ROOT / "requirements.txt"))
    assert sorted(project["optional-dependencies"]["cli"]) == sorted(_requirements(ROOT / "requirements-cli.txt"))
    assert "-r requirements.txt" in (ROOT / "requirements-cli.txt").read_text().splitlines()


def test_ci_tests_the_declared_floors():
    """.ci/run's floor environment pins exactly the lower bounds the requirements declare."""
    declared = dict(re.fullmatch(r"([A-Za-z0-9_.-]+)>=(\S+)", l).groups()
                    for l in _requirements(ROOT / "requirements.txt") + _requirements(ROOT / "requirements-cli.txt"))
    pinned = re.findall(r'"([a-z]+)==([0-9.]+)"', (ROOT / ".ci" / "run").read_text())
    assert {name for name, _ in pinned} >= {"diffusers", "peft"}
    assert all(declared[name] == version for name, version in pinned if name != "torch"), pinned


def test_the_comfyui_requirements_leave_torch_and_the_trainer_stack_alone():
    names = {re.split(r"[<>=!~ \[]", l)[0].lower() for l in _requirements(ROOT / "requirements.txt")}
    assert not names & {"torch", "torchvision", "torchaudio", "peft", "transformers", "accelerate"}


def test_one_version_and_a_license_that_pyproject_names():
    tomllib = pytest.importorskip("tomllib")
    import dreamrelation_core

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["version"] == dreamrelation_core.__version__       # the registry reads pyproject's
    assert project["license"]["text"] == "Apache-2.0"
    assert "Apache License" in (ROOT / "LICENSE").read_text() and (ROOT / "NOTICE").is_file()


def test_the_core_has_no_import_cycle():
    """Between the core's modules, lazy (in-function) imports included."""
    import ast

    core = ROOT / "dreamrelation_core"

    def name(path: Path) -> str:
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    graph = {}
    for path in core.rglob("*.py"):
        module = name(path)
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                deps.add(".".join(parts + ([node.module] if node.module else [])))
        graph[module] = deps - {module}

    def cycle_from(module, stack):
        for dep in graph.get(module, ()):
            if dep in stack:
                return stack[stack.index(dep):] + [dep]
            if dep in graph and (found := cycle_from(dep, stack + [dep])):
                return found
        return None

    assert all(cycle_from(m, [m]) is None for m in graph), [cycle_from(m, [m]) for m in graph if cycle_from(m, [m])][0]
