#!/usr/bin/env python3
"""Fails when a markdown doc names something the repository does not have.

Checked in README.md, CONTRIBUTING.md, docs/**/*.md and charts/*/README.md:

- a repository path (`crates/...`, `scripts/...`, `docs/...`, ...) that does not exist,
  and a `FILE.rs::name` whose file has no `fn name`;
- a relative link target, or its #anchor, that does not exist;
- an `AEGIS_*` setting that no source file, script or chart mentions;
- a name `aegis-*` in code that is neither a crate under crates/ nor a name used by
  the code, charts or scripts (a Kubernetes object, a file);
- `cargo test --test NAME module::` where NAME is no test target or module none of
  its files;
- a long flag given to `aegis`, `safe` or `aegis-bench` in code (or a code span that
  is only a flag) that none of their clap arguments declares;
- a crate under crates/ missing from README's layout table or from the dependency
  table of docs/ARCHITECTURE.md, and a row of that table whose crates differ from the
  crate's Cargo.toml [dependencies].

Names are taken from the source, not from a list kept by hand, so a doc goes stale
only when its code changes. Usage: scripts/check_docs.py [--root DIR]. Exits 1 and
prints `doc:line: what` for each mismatch.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

TOP_DIRS = ("crates", "scripts", "docs", "charts", "deploy", "examples", "tools", "fuzz", ".ci")
PATH_RE = re.compile(r"(?<![\w./$~-])((?:%s)/[\w./-]*)" % "|".join(re.escape(d) for d in TOP_DIRS))
TEST_RE = re.compile(r"::(\w+)")
LINK_RE = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
ENV_RE = re.compile(r"\bAEGIS_[A-Z0-9_]*[A-Z0-9](?![A-Za-z0-9])(_?\*)?")
NAME_RE = re.compile(r"(?<![\w./-])aegis-[a-z0-9]+(?:-[a-z0-9]+)*\b(?![./])")
FLAG_RE = re.compile(r"^--([a-z0-9][a-z0-9-]*)(?:=.*)?$")
SPAN_RE = re.compile(r"(`+)(.+?)\1")
# The binaries whose flags are checked, and where their clap arguments are declared.
BINARIES = {"aegis": "crates/aegis/src", "safe": "crates/aegis/src", "aegis-bench": "crates/aegis-bench/src"}
SOURCE_SUFFIXES = {".rs", ".sh", ".py", ".yaml", ".yml", ".toml", ".json", ".tpl", ".go", ".txt", ""}


@dataclass
class Doc:
    path: Path
    rel: str
    lines: list[str]
    # (line number, text) of every code span and every line of a fenced block.
    code: list[tuple[int, str]] = field(default_factory=list)


def read_doc(root: Path, path: Path) -> Doc:
    lines = path.read_text(encoding="utf-8").splitlines()
    doc = Doc(path, str(path.relative_to(root)), lines)
    fenced = False
    for n, line in enumerate(lines, 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            doc.code.append((n, line))
        else:
            doc.code.extend((n, m.group(2).strip()) for m in SPAN_RE.finditer(line))
    return doc


def docs_of(root: Path) -> list[Path]:
    found = [root / "README.md", root / "CONTRIBUTING.md"]
    found += sorted((root / "docs").rglob("*.md"))
    found += sorted(root.glob("charts/*/README.md"))
    return [p for p in found if p.is_file()]


def source_files(root: Path):
    """Every file that is code, script, chart or config (not a doc, not build output)."""
    for top in ("crates", "scripts", "charts", "deploy", "examples", "tools", "fuzz", ".ci"):
        for p in (root / top).rglob("*"):
            if p.is_file() and p.suffix in SOURCE_SUFFIXES and "target" not in p.parts:
                yield p
    for name in ("Dockerfile", "Cargo.toml"):
        if (root / name).is_file():
            yield root / name


def source_text(root: Path) -> str:
    return "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in source_files(root))


def clap_flags(src_dir: Path) -> set[str]:
    """Long flags declared by `#[arg(...)]` attributes: `long = "x"`, or `long` and the field's name."""
    flags = {"help", "version"}
    for p in src_dir.rglob("*.rs"):
        text = p.read_text(encoding="utf-8")
        for m in re.finditer(r"#\[arg\(", text):
            body, end = balanced(text, m.end())
            named = re.search(r'\blong\s*=\s*"([^"]+)"', body)
            for alias in re.findall(r'\b(?:visible_)?alias(?:es)?\s*=\s*\[?"([^"]+)"', body):
                flags.add(alias)
            if named:
                flags.add(named.group(1))
            elif re.search(r"\blong\b", body):
                fld = re.match(r"\]\s*(?:(?:///[^\n]*|#\[[^\n]*\])\s*)*(?:pub(?:\([^)]*\))?\s+)?(\w+)\s*:", text[end:])
                if fld:
                    flags.add(fld.group(1).replace("_", "-"))
    return flags


def balanced(text: str, start: int) -> tuple[str, int]:
    """The text up to the parenthesis that closes the one opened before `start`."""
    depth, i = 1, start
    while i < len(text) and depth:
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        i += 1
    return text[start : i - 1], i


class Checker:
    def __init__(self, root: Path):
        self.root = root
        self.errors: list[str] = []
        self.source = source_text(root)
        self.env = set(re.findall(r"AEGIS_[A-Z0-9_]+", self.source))
        # A flag named alone may be a script's or a tool's the scripts run (`--no-agent`).
        self.script_flags = set(re.findall(r"--([a-z0-9][a-z0-9-]*)", self.source))
        self.words = set(re.findall(r"aegis-[a-z0-9-]*[a-z0-9]", self.source))
        self.crates = sorted(p.parent.name for p in root.glob("crates/*/Cargo.toml"))
        self.flags = {b: clap_flags(root / d) for b, d in BINARIES.items() if (root / d).is_dir()}

    def fail(self, doc: Doc, line: int, what: str) -> None:
        self.errors.append(f"{doc.rel}:{line}: {what}")

    def check(self, doc: Doc) -> None:
        for n, line in enumerate(doc.lines, 1):
            self.check_paths(doc, n, line)
            self.check_links(doc, n, line)
            self.check_env(doc, n, line)
        for n, code in doc.code:
            self.check_names(doc, n, code)
            self.check_flags(doc, n, code)
            self.check_test_targets(doc, n, code)

    def check_paths(self, doc: Doc, n: int, line: str) -> None:
        for m in PATH_RE.finditer(line):
            path = m.group(1).rstrip(".")
            after = line[m.end() :]
            if after[:1] in ("<", "{", "*", "…") or "..." in path or re.match(r"\.\.\.|[A-Z]+\b", after):
                continue  # a placeholder such as crates/<crate>/tests/ or tests/FILE.rs
            if path.startswith("deploy/") and path.count("/") == 1 and "kubectl" in line:
                continue  # kubectl's deploy/NAME is a Deployment, not a file
            target = self.root / path
            if not target.exists():
                self.fail(doc, n, f"names {path}, which does not exist")
                continue
            test = TEST_RE.match(after)
            if test and target.is_file() and not re.search(r"\bfn %s\b" % re.escape(test.group(1)), target.read_text()):
                self.fail(doc, n, f"names {path}::{test.group(1)}, but {path} has no fn {test.group(1)}")

    def check_links(self, doc: Doc, n: int, line: str) -> None:
        for m in LINK_RE.finditer(line):
            target, _, anchor = m.group(1).partition("#")
            if re.match(r"[a-z]+:", target):
                continue  # a URL
            path = doc.path.parent / target if target else doc.path
            if not path.exists():
                self.fail(doc, n, f"links to {target}, which does not exist")
            elif anchor and path.suffix == ".md" and anchor not in anchors(path):
                self.fail(doc, n, f"links to {target}#{anchor}, but {target or doc.rel} has no such heading")

    def check_env(self, doc: Doc, n: int, line: str) -> None:
        for m in ENV_RE.finditer(line):
            name, prefix = m.group(0).rstrip("*"), m.group(1)
            known = any(e.startswith(name) for e in self.env) if prefix else name in self.env
            if not known:
                self.fail(doc, n, f"names the setting {name}{'*' if prefix else ''}, which no code or script reads")

    def check_names(self, doc: Doc, n: int, code: str) -> None:
        for m in NAME_RE.finditer(code):
            name = m.group(0)
            if name not in self.crates and name not in self.words:
                self.fail(doc, n, f"names {name}, which is neither a crate under crates/ nor a name in the code")

    def check_flags(self, doc: Doc, n: int, code: str) -> None:
        for binary, flag in flags_given(code):
            known = self.flags.get(binary) if binary else set().union(*self.flags.values())
            if known is None or flag in known or (binary is None and flag in self.script_flags):
                continue
            whose = f"`{binary}` does not have" if binary else "no binary, script or test of the repository has"
            self.fail(doc, n, f"names the flag --{flag}, which {whose}")

    def check_test_targets(self, doc: Doc, n: int, code: str) -> None:
        """`cargo test --test NAME [module::]`: NAME is a test target, module one of its files."""
        for m in re.finditer(r"--test[ =](\w+)((?:\s+[^-\s]\S*)*)", code):
            target = m.group(1)
            dirs = [p for c in self.crates for p in (self.root / "crates" / c / "tests",)]
            if not any((d / f"{target}.rs").is_file() or (d / target / "main.rs").is_file() for d in dirs):
                self.fail(doc, n, f"runs the test target {target}, which no crates/*/tests/ has")
                continue
            for module in re.findall(r"(?<![\w:])(\w+)::", code[m.end(1) :]):
                if not any((d / target / f"{module}.rs").is_file() for d in dirs):
                    self.fail(doc, n, f"filters on {module}::, which is not a module of the test target {target}")

    def check_tables(self) -> None:
        readme = self.root / "README.md"
        if readme.is_file():
            text = readme.read_text(encoding="utf-8")
            for crate in self.crates:
                if f"| `crates/{crate}` |" not in text:
                    self.errors.append(f"README.md: the layout table has no row for crates/{crate}")
        arch = self.root / "docs/ARCHITECTURE.md"
        if arch.is_file():
            self.check_dependency_table(arch.read_text(encoding="utf-8").splitlines())

    def check_dependency_table(self, lines: list[str]) -> None:
        rows = {}
        for n, line in enumerate(lines, 1):
            m = re.match(r"\| `(aegis[\w-]*)` \| (.*) \|$", line)
            if m and m.group(1) not in rows and "depends on" in "\n".join(lines[max(0, n - 20) : n]):
                rows[m.group(1)] = (n, set(re.findall(r"`(aegis[\w-]*)`", m.group(2))))
        for crate in self.crates:
            manifest = tomllib.loads((self.root / "crates" / crate / "Cargo.toml").read_text(encoding="utf-8"))
            wanted = {d for d in manifest.get("dependencies", {}) if d.startswith("aegis")}
            if crate not in rows:
                self.errors.append(f"docs/ARCHITECTURE.md: the dependency table has no row for {crate}")
                continue
            n, listed = rows[crate]
            if listed != wanted:
                self.errors.append(
                    f"docs/ARCHITECTURE.md:{n}: {crate} depends on {sorted(wanted) or 'nothing'} "
                    f"(crates/{crate}/Cargo.toml), the table says {sorted(listed) or 'nothing'}"
                )


def anchors(path: Path) -> set[str]:
    """The anchors GitHub gives a markdown file's headings (lower case, punctuation dropped)."""
    found, seen, fenced = set(), {}, False
    for line in path.read_text(encoding="utf-8").splitlines():
        fenced ^= line.lstrip().startswith("```")
        m = None if fenced else re.match(r"#{1,6}\s+(.*?)\s*#*$", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-")
            seen[slug] = seen.get(slug, -1) + 1
            found.add(f"{slug}-{seen[slug]}" if seen[slug] else slug)  # a repeated heading gets -1, -2, ...
    return found


def flags_given(code: str):
    """(binary, flag) for each long flag given to one of BINARIES; binary None for a lone flag."""
    tokens = code.split()
    if len(tokens) == 1 and FLAG_RE.match(tokens[0]):
        yield None, FLAG_RE.match(tokens[0]).group(1)
        return
    for segment in re.split(r"\|\|?|&&|;|\$\(|`", code):
        words = segment.split()
        while words and (re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]) or words[0] in ("$", "sudo", "env", "exec")):
            words.pop(0)
        if not words or Path(words[0]).name not in BINARIES:
            continue
        for word in words[1:]:
            if word == "--":
                break  # what follows is another program's command line
            m = FLAG_RE.match(word.strip("'\",)"))
            if m:
                yield Path(words[0]).name, m.group(1)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    args = parser.parse_args(argv)
    checker = Checker(args.root)
    docs = docs_of(args.root)
    for path in docs:
        checker.check(read_doc(args.root, path))
    checker.check_tables()
    for e in checker.errors:
        print(e, file=sys.stderr)
    if checker.errors:
        print(f"{len(checker.errors)} doc mismatches (above): fix the doc, or the name in it", file=sys.stderr)
        return 1
    print(f"{len(docs)} docs checked: every path, link, setting, crate and flag they name exists")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
