"""Merge pip requirement files into one, with real version-specifier logic.

    python scripts/merge_requirements.py OUT FILE [FILE ...]

Requirements of the same project (names compared canonically) are combined: their specifier
sets are intersected and their extras united. A conflict (two different pins, a pin outside
another file's range, or ranges with no version in common) stops with exit status 1 and a
message naming both files and lines.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import Specifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version


class MergeError(Exception):
    """Requirements that cannot be merged; the message names the files."""


@dataclass
class Merged:
    """One project's combined requirement and where each part came from."""

    name: str
    extras: set[str] = field(default_factory=set)
    specifier: SpecifierSet = field(default_factory=SpecifierSet)
    markers: set[str] = field(default_factory=set)
    sources: list[tuple[str, str]] = field(default_factory=list)

    def line(self) -> str:
        extras = f"[{','.join(sorted(self.extras))}]" if self.extras else ""
        marker = f" ; {' or '.join(sorted(self.markers))}" if self.markers else ""
        return f"{self.name}{extras}{self.specifier}{marker}"


def _bounds_conflict(specs: SpecifierSet) -> bool:
    """True when the range has no version at all (lower bound above upper bound)."""
    lower: tuple[Version, bool] | None = None
    upper: tuple[Version, bool] | None = None
    for spec in specs:
        if spec.operator in (">=", ">"):
            cand = (Version(spec.version), spec.operator == ">=")
            if lower is None or cand[0] > lower[0] or (cand[0] == lower[0] and not cand[1]):
                lower = cand
        elif spec.operator in ("<=", "<"):
            cand = (Version(spec.version), spec.operator == "<=")
            if upper is None or cand[0] < upper[0] or (cand[0] == upper[0] and not cand[1]):
                upper = cand
    if lower and upper:
        if lower[0] > upper[0]:
            return True
        if lower[0] == upper[0] and not (lower[1] and upper[1]):
            return True
    return False


def _pins(specs: SpecifierSet) -> list[Specifier]:
    return [s for s in specs if s.operator in ("==", "===") and "*" not in s.version]


def _check(merged: Merged, new: SpecifierSet, where: str) -> None:
    combined = merged.specifier & new
    pins = _pins(combined)
    versions = {Version(p.version) for p in pins}
    conflict = len(versions) > 1
    if not conflict and versions:
        version = next(iter(versions))
        conflict = not combined.contains(version, prereleases=True)
    conflict = conflict or _bounds_conflict(combined)
    if conflict:
        before = ", ".join(f"{src} ({text})" for src, text in merged.sources)
        raise MergeError(
            f"conflicting requirements for {merged.name}: {where} wants '{new}' but {before} "
            f"already ask for '{merged.specifier}'; make the two files agree"
        )
    merged.specifier = combined


def parse_file(path: Path) -> list[tuple[Requirement, str]]:
    """The requirements of one file with 'file:line' for each."""
    out = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        text = raw.split(" #", 1)[0].strip()
        if not text or text.startswith("#"):
            continue
        where = f"{path}:{number}"
        if text.startswith("-"):
            raise MergeError(
                f"{where}: pip options ({text.split()[0]}) are not supported in "
                "merged files; list the requirements themselves"
            )
        try:
            out.append((Requirement(text), where))
        except InvalidRequirement as exc:
            raise MergeError(f"{where}: not a requirement: {text!r} ({exc})") from None
    return out


def merge(paths: list[Path]) -> list[Merged]:
    """Merge the files in order; raise MergeError on a conflict."""
    merged: dict[str, Merged] = {}
    for path in paths:
        for req, where in parse_file(path):
            key = canonicalize_name(req.name)
            entry = merged.setdefault(key, Merged(name=req.name))
            _check(entry, req.specifier, where)
            entry.extras |= set(req.extras)
            if req.marker:
                entry.markers.add(str(req.marker))
            entry.sources.append((where, str(req.specifier) or "any version"))
    return list(merged.values())


def main(argv: list[str]) -> int:
    """Command line entry point."""
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    out, inputs = Path(argv[0]), [Path(p) for p in argv[1:]]
    missing = [str(p) for p in inputs if not p.is_file()]
    if missing:
        print(f"merge_requirements: no such file: {', '.join(missing)}", file=sys.stderr)
        return 1
    try:
        merged = merge(inputs)
    except MergeError as exc:
        print(f"merge_requirements: {exc}", file=sys.stderr)
        return 1
    header = "# Merged by scripts/merge_requirements.py from: " + ", ".join(map(str, inputs))
    out.write_text(header + "\n" + "\n".join(m.line() for m in merged) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
