"""Paste the studies' README snippets between their markers in README.md.

    python benchmarks/update_readme.py            # rewrite the marked sections
    python benchmarks/update_readme.py --check    # exit 1 if README.md is out of date

Each study writes ``benchmarks/results/NAME_readme.md``; README.md holds
``<!-- begin:NAME -->`` ... ``<!-- end:NAME -->``. Only the text between a pair
of markers is replaced; everything else in README.md is left exactly as it is.
A snippet without markers in README.md, or markers without a snippet, is
reported and left alone (add the marker pair by hand where the section belongs).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from bench_common import RESULTS, ROOT

MARKERS = re.compile(r"(<!-- begin:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- end:(?P=name) -->)",
                     re.DOTALL)


def snippets(folder: Path) -> dict[str, str]:
    """Snippet text by name, from ``folder/NAME_readme.md``."""
    return {path.name[: -len("_readme.md")]: path.read_text().rstrip() + "\n"
            for path in sorted(folder.glob("*_readme.md"))}


def paste(readme: str, texts: dict[str, str]) -> tuple[str, list[str], list[str]]:
    """README text with every marked section replaced; (text, updated, markers without text)."""
    updated, missing = [], []

    def replace(match: re.Match) -> str:
        name = match["name"]
        if name not in texts:
            missing.append(name)
            return match[0]
        updated.append(name)
        return match[1] + texts[name] + match[4]

    return MARKERS.sub(replace, readme), updated, missing


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", default=str(ROOT / "README.md"))
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 if a marked section is out of date")
    args = parser.parse_args()
    path = Path(args.readme)
    old = path.read_text()
    texts = snippets(Path(args.results))
    new, updated, missing = paste(old, texts)
    for name in sorted(set(texts) - set(updated)):
        print(f"no <!-- begin:{name} --> / <!-- end:{name} --> pair in {path.name}: "
              f"{name}_readme.md not pasted", file=sys.stderr)
    for name in missing:
        print(f"markers for {name} but no {name}_readme.md: left as it is", file=sys.stderr)
    if args.check:
        stale = new != old
        print(f"{path.name} is {'out of date' if stale else 'up to date'}")
        return int(stale)
    if new != old:
        path.write_text(new)
    print(f"{path.name}: pasted {', '.join(updated) or 'nothing'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
