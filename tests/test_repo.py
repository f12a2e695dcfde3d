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
