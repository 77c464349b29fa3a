"""docs/plugins.md: its hook reference is the one generated from the hookspecs' docstrings."""

from __future__ import annotations

import inspect
from pathlib import Path

from k3p import hookdocs, hookspecs

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"


def test_hook_reference_in_the_guide_is_current() -> None:
    written = hookdocs.generated_part(GUIDE.read_text())
    assert written == hookdocs.render_hook_reference(), (
        f"the hook reference in docs/plugins.md is stale: run `{hookdocs.COMMAND}`"
    )


def test_every_hookspec_has_a_docstring() -> None:
    found = [fn for _phase, fns in hookdocs.hooks() for fn in fns]
    specs = {name for name, fn in vars(hookspecs).items() if inspect.isfunction(fn) and hasattr(fn, "k3p_spec")}
    assert {fn.__name__ for fn in found} == specs and specs  # every hook is in the reference, once
    undocumented = [fn.__name__ for fn in found if not (inspect.getdoc(fn) or "").strip()]
    assert undocumented == [], f"hookspecs without a docstring: {', '.join(undocumented)}"


def test_every_hook_is_under_a_phase() -> None:
    assert all(title.startswith("Phase ") for title, _fns in hookdocs.hooks())


def test_write_replaces_only_the_generated_part(tmp_path: Path) -> None:
    guide = tmp_path / "plugins.md"
    guide.write_text(f"# Guide\n\nbefore\n\n{hookdocs.START}\nold text\n{hookdocs.END}\n\nafter\n")
    assert hookdocs.main(["--write", str(guide)]) == 0
    text = guide.read_text()
    assert text.startswith("# Guide\n\nbefore\n\n") and text.endswith(f"{hookdocs.END}\n\nafter\n")
    assert "old text" not in text and hookdocs.generated_part(text) == hookdocs.render_hook_reference()
    assert hookdocs.main(["--write", str(guide)]) == 0 and guide.read_text() == text  # idempotent
