"""docs/run-file.md is what node.config.reference writes from the settings: it cannot drift."""

from dataclasses import fields, is_dataclass
from pathlib import Path

from node.config import RunConfig
from node.config.reference import render

PAGE = Path(__file__).resolve().parents[1] / "docs" / "run-file.md"


def test_run_file_reference_is_current():
    assert PAGE.read_text() == render(), "regenerate: python -m node.config.reference > docs/run-file.md"


def test_every_run_setting_has_a_row_with_its_meaning():
    page = render()
    for table in fields(RunConfig):
        section = getattr(RunConfig(), table.name)
        names = [f.name for f in fields(section)] if is_dataclass(section) else [table.name]
        for name in names:
            row = next((line for line in page.splitlines() if line.startswith(f"| `{name}` |")), "")
            assert row and not row.endswith("|  |"), f"{table.name}.{name} has no row or no meaning"
    assert "| `inner_lr` | `float` | `0.003` | > 0 |" in page  # type, default and range from the code
