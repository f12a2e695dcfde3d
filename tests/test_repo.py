"""Repository promises: CI runs exactly the README's test command; the pack never imports comfy in the core."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"# 2\. install, then run the tests\n(.+)\n", readme).group(1).strip()
    assert command in (ROOT / ".ci" / "run").read_text().splitlines()


def test_core_never_imports_comfy():
    for path in (ROOT / "dreamrelation_core").rglob("*.py"):
        assert not re.search(r"^\s*(from|import)\s+comfy", path.read_text(), re.M), path


def test_requirements_never_pin_torch():
    names = [re.split(r"[<>=!~ ]", l)[0].lower() for l in (ROOT / "requirements.txt").read_text().splitlines()
             if l.strip() and not l.startswith("#")]
    assert "torch" not in names and "torchvision" not in names


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
