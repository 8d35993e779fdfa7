"""Every relative link of README.md and docs/ resolves: the file exists and, for a `#anchor`, the
heading does (GitHub's heading ids).  Links into a DVC output (e.g. `reports/figures/…`, written by
a run, not in git) are accepted when dvc.yaml declares that output.  No network: external links
(http, https, mailto) are not checked."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

_FENCE = re.compile(r"^\s*(```|~~~)")
_INLINE_CODE = re.compile(r"`[^`]*`")
# [text](target) and ![alt](target); target without spaces, optional "title"
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks, inline code removed."""
    out, fenced = [], False
    for n, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((n, _INLINE_CODE.sub("", line)))
    return out


def heading_slug(heading: str) -> str:
    """GitHub's id of a Markdown heading: text only, lower case, punctuation dropped, spaces → -.

    >>> heading_slug("What does `vit_tiny` need (from scratch)?")
    'what-does-vit_tiny-need-from-scratch'
    """
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)   # links → their text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The heading ids of a Markdown file, duplicates numbered -1, -2, … as GitHub does."""
    seen: dict[str, int] = {}
    out = set()
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        m = None if fenced else _HEADING.match(line)
        if m:
            slug = heading_slug(m.group(2))
            k = seen.get(slug, 0)
            seen[slug] = k + 1
            out.add(slug if k == 0 else f"{slug}-{k}")
    return out


def dvc_outputs(root: Path) -> list[Path]:
    """Paths dvc.yaml declares as stage outputs or plots (templated ones left out)."""
    spec = yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8")) or {}
    paths: list[str] = []

    def entries(items):
        for item in items or []:
            paths.extend(item.keys() if isinstance(item, dict) else [item])

    for stage in (spec.get("stages") or {}).values():
        body = stage.get("do", stage)
        for key in ("outs", "metrics", "plots"):
            entries(body.get(key))
    entries(spec.get("plots"))
    return [(root / p).resolve() for p in paths if "${" not in str(p)]


def broken_links(root: Path, files: list[Path]) -> list[str]:
    """One line per link of ``files`` whose target (or anchor) does not exist."""
    outputs = dvc_outputs(root) if (root / "dvc.yaml").exists() else []
    problems = []
    for md in files:
        for n, line in _prose_lines(md.read_text(encoding="utf-8")):
            for target in _LINK.findall(line):
                if re.match(r"^[a-z][a-z0-9+.-]*:", target):      # http:, https:, mailto:
                    continue
                path_part, _, anchor = target.partition("#")
                dest = (md.parent / path_part).resolve() if path_part else md.resolve()
                where = f"{md.relative_to(root)}:{n}: {target}"
                if not dest.exists():
                    if not any(dest == o or o in dest.parents for o in outputs):
                        problems.append(f"{where}: no such file")
                    continue
                if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                    problems.append(f"{where}: no heading #{anchor} in {dest.name}")
    return problems


def doc_files(root: Path) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def test_every_relative_link_in_readme_and_docs_resolves():
    problems = broken_links(ROOT, doc_files(ROOT))
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_checker_finds_missing_files_and_anchors(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "dvc.yaml").write_text("stages:\n  report:\n    cmd: x\n    outs: [reports]\n")
    (tmp_path / "docs" / "a.md").write_text("# Title\n\n## Why `x` (α)?\n\n## Why `x` (α)?\n")
    (tmp_path / "README.md").write_text(
        "[ok](docs/a.md) [ok](docs/a.md#why-x-α) [ok](docs/a.md#why-x-α-1) [ok](#intro)\n"
        "[run output](reports/figures/f1.png) [web](https://example.org/missing)\n"
        "`[in code](missing.md)`\n```\n[in a fence](missing.md)\n```\n"
        "# Intro\n[gone](docs/b.md) [bad anchor](docs/a.md#nowhere) [not an out](metrics/x.json)\n")
    problems = broken_links(tmp_path, doc_files(tmp_path))
    assert [p.split(": ", 1)[1] for p in problems] == [
        "docs/b.md: no such file",
        "docs/a.md#nowhere: no heading #nowhere in a.md",
        "metrics/x.json: no such file",
    ]
    assert all(p.startswith("README.md:8: ") for p in problems)
