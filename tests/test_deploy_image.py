"""The image's build context holds every file the package needs: a file the Dockerfile does not
copy, or .dockerignore leaves out, is missing in the image, and the service that needs it refuses
to start (the compose end to end run found the JavaScript SDK missing that way). Checked here
without a container runtime: every symlink under src/ must point at a path that is both copied by a
COPY line of the build stage and kept by .dockerignore."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def copied_sources() -> list[str]:
    """The repository paths the Dockerfile's COPY lines (without --from) take from the context."""
    sources: list[str] = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        match = re.match(r"^COPY\s+(?!--from)(.+)$", line.strip())
        if match:
            sources += match.group(1).split()[:-1]
    return sources


def kept_by_dockerignore(path: str) -> bool:
    """.dockerignore's rules, last match wins (the subset this repository uses: `**`, `!dir/`, globs)."""
    kept = True
    for rule in (ROOT / ".dockerignore").read_text().splitlines():
        rule = rule.strip()
        if not rule or rule.startswith("#"):
            continue
        negate = rule.startswith("!")
        pattern = rule[1:] if negate else rule
        pattern = pattern.rstrip("/")
        if pattern == "**" or fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
            kept = negate
    return kept


def test_every_file_a_package_link_points_at_is_in_the_image() -> None:
    links = [path for path in (ROOT / "src").rglob("*") if path.is_symlink()]
    assert links, "the web app's SDK link was expected under src/"
    sources = copied_sources()
    for link in links:
        target = link.resolve().relative_to(ROOT)
        for file in [target] if target.is_file() else [p.relative_to(ROOT) for p in (ROOT / target).rglob("*")
                                                          if p.is_file()]:
            name = file.as_posix()
            if "node_modules" in file.parts:
                continue
            assert any(name == s or name.startswith(s.rstrip("/") + "/") for s in sources), \
                f"{link.relative_to(ROOT)} -> {name}: no COPY line of the Dockerfile takes it"
            assert kept_by_dockerignore(name), f"{name}: .dockerignore leaves it out of the build context"


def test_the_image_is_the_product_without_the_tools() -> None:
    """tools/ (pystacker-tools: bench, chaos) is neither copied nor in the build context: the image
    installs the root pyproject.toml, whose package never imports the tools (tests/unit/test_tools_imports.py)."""
    tool_files = [p.relative_to(ROOT).as_posix() for p in (ROOT / "tools").rglob("*") if p.is_file()]
    assert "tools/pyproject.toml" in tool_files
    assert not any(source.rstrip("/") == "tools" or source.startswith("tools/") for source in copied_sources())
    assert [name for name in tool_files if kept_by_dockerignore(name)] == []
