"""The documentation site builds with `mkdocs build --strict`, as the docs workflow does.

--strict turns every warning into an error: a page in the nav that does not exist, a link to a missing
page or anchor. The internal developers' notes (docs/dev/) must stay out of the published site, and every
user page must be reachable from the nav.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"


def _nav_pages(nav) -> list[str]:
    pages = []
    for entry in nav:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages.extend(_nav_pages(value) if isinstance(value, list) else [value])
    return pages


@pytest.fixture(scope="module")
def built_site(tmp_path_factory):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -e '.[docs]')")
    site = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    return result, site


def test_docs_build_strict(built_site):
    result, site = built_site
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (site / "index.html").exists()
    for page in ["install", "containers", "hpc", "troubleshooting"]:
        assert (site / page / "index.html").exists(), page


def test_internal_notes_are_not_published(built_site):
    result, site = built_site
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (site / "dev").exists()
    assert "contracts" not in (site / "sitemap.xml").read_text()


def test_hpc_scripts_are_downloadable(built_site):
    result, site = built_site
    assert result.returncode == 0, result.stderr[-3000:]
    for script in (DOCS / "scripts").glob("*.sh"):
        assert (site / "scripts" / script.name).read_text() == script.read_text()


def test_every_user_page_is_in_the_nav():
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    in_nav = set(_nav_pages(config["nav"]))
    user_pages = {
        path.relative_to(DOCS).as_posix() for path in DOCS.rglob("*.md") if "dev" not in path.parts
    }
    assert user_pages - in_nav == set(), "pages missing from mkdocs.yml's nav"
    assert in_nav - user_pages == set(), "nav entries without a page"


def test_strict_build_fails_on_a_broken_link(tmp_path):
    """Guard: the configuration really makes a broken link fatal (validation settings, --strict)."""
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -e '.[docs]')")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# Home\n\nSee [the options](usage.md#no-such-anchor).\n")
    (docs / "usage.md").write_text("# Usage\n")
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    config.update(docs_dir="docs", nav=[{"Home": "index.md"}, {"Usage": "usage.md"}])
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode != 0
    assert "no-such-anchor" in result.stderr


def test_troubleshooting_table_names_existing_tests():
    """The 'bad inputs we test' table must not outlive the tests it cites."""
    import re

    cited = set(re.findall(r"`(test_\w+)`", (DOCS / "troubleshooting.md").read_text()))
    assert cited, "the troubleshooting page cites no test"
    defined = set()
    for path in (REPO / "tests").glob("test_*.py"):
        defined |= set(re.findall(r"^def (test_\w+)\(", path.read_text(), re.M))
    assert cited - defined == set(), "cited in docs/troubleshooting.md but not defined in tests/"
