"""The front page and docs/ cannot rot: links, images, anchors and the README's commands must resolve.

A renamed module, a moved doc or a chart no longer written fails here, in the suite, instead of on a
reader's first click.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_HTML_SRC = re.compile(r"""<(?:img|a)\s[^>]*(?:src|href)=["']([^"']+)["']""")
_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
_REPO_DIRS = ("configs/", "launch/", "ia_jax/", "tests/", "docs/", "third_party/", ".ci/")


def _prose(text: str) -> str:
    """The page without its fenced blocks, where `[x](y)` is code, not a link."""
    return _FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    headings = [line.lstrip("#").strip() for line in _prose(page.read_text(encoding="utf-8")).splitlines()
                if re.match(r"^#{1,6} ", line)]
    seen: dict[str, int] = {}
    out = set()
    for heading in headings:
        base = slug(heading)
        count = seen.get(base, 0)
        out.add(base if count == 0 else f"{base}-{count}")
        seen[base] = count + 1
    return out


def broken_links(page: Path) -> list[str]:
    """Every relative link or image of `page` whose file (or heading anchor) does not exist."""
    text = _prose(page.read_text(encoding="utf-8"))
    problems = []
    for target in _LINK.findall(text) + _HTML_SRC.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        if not resolved.exists():
            problems.append(f"{page.relative_to(ROOT)}: {target!r} -> {resolved} does not exist")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{page.relative_to(ROOT)}: {target!r}: no heading with anchor #{anchor} "
                            f"in {resolved.relative_to(ROOT)}")
    return problems


def commands(page: Path) -> list[str]:
    """Shell lines of the page's fenced blocks (comments and continuation backslashes joined)."""
    lines = []
    for block in _FENCE.findall(page.read_text(encoding="utf-8")):
        joined = re.sub(r"\\\n\s*", " ", block)
        lines += [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return lines


def missing_targets(command: str, root: Path = ROOT) -> list[str]:
    """Modules (`python -m X`) and repository files a command names that do not exist."""
    try:
        words = shlex.split(command, comments=True)
    except ValueError:
        return []  # not shell (e.g. a Python or JSON block)
    problems = []
    for i, word in enumerate(words):
        if word == "-m" and i + 1 < len(words) and i and words[i - 1].endswith(("python", "python3")):
            module = words[i + 1]
            parts = module.split(".")
            if parts[0] == "ia_jax":
                base = root.joinpath(*parts)
                if not (base.with_suffix(".py").exists() or (base / "__main__.py").exists()):
                    problems.append(f"{command!r}: module {module} has no {base.relative_to(root)}.py "
                                    f"or __main__.py")
            elif importlib.util.find_spec(parts[0]) is None:
                problems.append(f"{command!r}: module {module} is not installed")
        value = word.split("=", 1)[1] if word.startswith("--") and "=" in word else word
        if value.startswith(_REPO_DIRS) and not (root / value).exists():
            problems.append(f"{command!r}: {value} does not exist")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_and_images_resolve(page):
    assert broken_links(page) == []


def test_readme_commands_name_what_exists():
    readme = ROOT / "README.md"
    found = commands(readme)
    assert any("ia_jax.main" in c for c in found), "the README's quick start lost the main job's command"
    assert [p for c in found for p in missing_targets(c)] == []


def test_readme_is_a_front_page():
    """The README stays short; the detail lives in docs/."""
    assert (ROOT / "README.md").stat().st_size <= 10 * 1024


def test_checker_finds_broken_links_and_anchors(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# Title\n\n## The two judges\n", encoding="utf-8")
    page = tmp_path / "README.md"
    page.write_text("[ok](docs/a.md#the-two-judges) ![chart](docs/missing.png) [bad](docs/a.md#nope)\n"
                    "[web](https://example.com) [self](#title-x)\n\n```\n[code](not/a/link.md)\n```\n# Title X\n",
                    encoding="utf-8")
    problems = broken_links(page)
    assert len(problems) == 2 and "missing.png" in problems[0] and "#nope" in problems[1]


def test_checker_finds_missing_modules_and_files(tmp_path):
    (tmp_path / "ia_jax" / "toy").mkdir(parents=True)
    (tmp_path / "ia_jax" / "main.py").write_text("", encoding="utf-8")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "toy.py").write_text("", encoding="utf-8")
    assert missing_targets("python -m ia_jax.main --config=configs/toy.py", tmp_path) == []
    problems = missing_targets(".venv/bin/python -m ia_jax.gone --config=configs/smoke.py", tmp_path)
    assert len(problems) == 2 and "ia_jax.gone" in problems[0] and "configs/smoke.py" in problems[1]
    assert missing_targets("python -m no_such_module_anywhere", tmp_path)
    assert missing_targets("python3 -m venv .venv && .venv/bin/pip install -q -e .", tmp_path) == []


def test_slugs_follow_github():
    assert slug("The two judges") == "the-two-judges"
    assert slug("Seeds 0, 1, 2") == "seeds-0-1-2"
    assert slug("`report.json` schema (version 1)") == "reportjson-schema-version-1"
