"""The files a Hugging Face Space needs to run the studio: README front matter, requirements.txt,
packages.txt, and app.py that only launches studio.ui."""

from __future__ import annotations

import ast
import re

from ui_support import REPO


def _front_matter() -> dict[str, str]:
    text = (REPO / "README.md").read_text()
    m = re.match(r"---\n(.*?)\n---\n", text, re.S)
    assert m, "README.md must start with a --- front matter block"
    out = {}
    for line in m.group(1).splitlines():
        key, _, value = line.partition(":")
        out[key.strip()] = value.strip().strip('"')
    return out


def test_readme_front_matter_describes_a_gradio_space():
    import gradio

    fm = _front_matter()
    assert fm["sdk"] == "gradio"
    assert fm["sdk_version"] == gradio.__version__  # the version the studio is tested with
    assert fm["app_file"] == "app.py" and (REPO / "app.py").is_file()
    assert re.fullmatch(r"3\.\d+", fm["python_version"])


def test_requirements_pin_the_cpu_torch_and_install_the_project():
    import tomllib

    lines = [ln.strip() for ln in (REPO / "requirements.txt").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_pin = next(d for d in deps if d.startswith("torch=="))
    assert any(ln.startswith(torch_pin) for ln in lines), f"requirements.txt must pin {torch_pin}"
    assert "." in lines  # the project itself, with its pinned dependencies


def test_packages_are_debian_package_names():
    names = [ln.strip() for ln in (REPO / "packages.txt").read_text().splitlines() if ln.strip()]
    assert names and all(re.fullmatch(r"[a-z0-9][a-z0-9+.-]+", n) for n in names)


def test_app_py_only_launches_the_studio():
    tree = ast.parse((REPO / "app.py").read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "launch"]
    imports = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert calls and any(i.module == "studio.ui.app" for i in imports)
    assert "gradio" not in (REPO / "app.py").read_text()
