"""The docs say what the project holds: the config-group table lists exactly the options in conf/, every link
points at a file that exists, and the README stays a short entry point."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md"))


def _config_table() -> dict[str, set[str]]:
    """group -> the options its row lists (the first `name` of each comma-separated item)."""
    rows = {}
    for line in (ROOT / "docs" / "configuration.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            group = cells[0].strip("`")
            rows[group] = {m.group(1) for item in cells[1].split(", ") if (m := re.match(r"`([^`]+)`", item))}
    return rows


def _shipped(group: str) -> set[str]:
    folder = ROOT / "experiments" if group == "experiment" else ROOT / "conf" / group
    return {p.stem for p in folder.glob("*.yaml")}


def test_the_config_group_table_lists_every_option_in_conf_and_no_other():
    table = _config_table()
    groups = {p.name for p in (ROOT / "conf").iterdir() if p.is_dir() and p.name != "hydra"} | {"experiment"}
    assert groups <= table.keys(), groups - table.keys()
    for group in sorted(groups):
        assert table[group] == _shipped(group), group
    # Hydra's own launchers are listed too; trainwise's presets must be among them.
    assert _shipped("hydra/launcher") <= table["hydra/launcher"]


@pytest.mark.parametrize("page", [ROOT / "README.md", *DOCS], ids=lambda p: p.name)
def test_every_relative_link_points_at_a_file_of_the_project(page):
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text()):
        if "://" in target:
            continue
        assert (page.parent / target).exists(), f"{page.name} links {target}"


def test_the_readme_is_an_entry_point_and_names_every_page_of_docs():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for page in DOCS:
        assert f"(docs/{page.name})" in readme, page.name
