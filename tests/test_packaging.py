"""Packaging and documents: the license, the project metadata (one repository URL, used by the Colab notebook),
dependencies with lower bounds only, chex a test dependency only, README links that stay inside the repository."""
import json
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
URL = "https://github.com/diffjax/diffjax"


def _read(*path):
    with open(os.path.join(REPO, *path)) as f:
        return f.read()


def _list(text, key):
    """The strings of the TOML array ``key = [...]`` in ``text`` (a regex: tomllib is Python >= 3.11)."""
    m = re.search(rf"^{re.escape(key)} = \[(.*?)\]", text, re.S | re.M)
    assert m, key
    return re.findall(r'"([^"]+)"', re.sub(r"#[^\n]*", "", m.group(1)))


def test_license_and_metadata():
    assert "Apache License" in _read("LICENSE") and "Version 2.0, January 2004" in _read("LICENSE")
    meta = _read("pyproject.toml")
    assert 'license = "Apache-2.0"' in meta and 'license-files = ["LICENSE"]' in meta
    assert re.search(r"^authors = ", meta, re.M)
    assert f'Repository = "{URL}"' in meta and f'Homepage = "{URL}"' in meta


def test_dependencies_have_lower_bounds_only_and_chex_is_for_tests():
    meta = _read("pyproject.toml")
    runtime = _list(meta, "dependencies")
    test = _list(meta, "test")
    for req in runtime + test + _list(meta, "tfds"):
        assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+>=[0-9.]+", req), req
    assert not any(r.startswith("chex") for r in runtime) and any(r.startswith("chex") for r in test)
    for root, _, files in os.walk(os.path.join(REPO, "diffjax")):  # the library never imports chex
        for name in files:
            if name.endswith(".py"):
                src = _read(root, name)
                assert not re.search(r"^\s*(import|from) chex", src, re.M), os.path.join(root, name)


def test_colab_notebook_installs_from_the_declared_url():
    nb = json.loads(_read("experiments", "colab_tpu.ipynb"))
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    urls = set(re.findall(r"https://github\.com/[\w.-]+/[\w.-]+", code))
    assert urls == {URL}, urls


def test_readme_links_stay_in_the_repository():
    readme = _read("README.md")
    assert "../" not in readme
    for target in re.findall(r"\]\(([^)#]+)\)", readme):
        if not target.startswith(("http://", "https://")):
            assert os.path.exists(os.path.join(REPO, target)), target
