#!/usr/bin/env python3
"""Every relative link in the project's Markdown resolves: the file exists and, for a
`#fragment`, the target has a heading with that anchor (GitHub's rule: lower case, punctuation
dropped, spaces to hyphens). Links inside code are not links. Exits 1, listing each broken one.

    python3 scripts/check_links.py          # from anywhere in the repository
"""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP = {"target", ".git", "node_modules", "fuzz"}
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def markdown_files():
    for top, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIP and not d.startswith(".")]
        for f in files:
            if f.endswith(".md"):
                yield os.path.join(top, f)


def prose(text):
    """The text outside fenced blocks, indented blocks and inline code."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    text = re.sub(r"^(?: {4}|\t).*$", "", text, flags=re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def anchors(path):
    out = set()
    for line in open(path, encoding="utf-8").read().splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            out.add(slug)
    return out


def main():
    broken = []
    for md in markdown_files():
        for target in LINK.findall(prose(open(md, encoding="utf-8").read())):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):
                continue  # http:, https:, mailto:
            path, _, fragment = target.partition("#")
            dest = os.path.normpath(os.path.join(os.path.dirname(md), path)) if path else md
            where = os.path.relpath(md, ROOT)
            if not os.path.exists(dest):
                broken.append(f"{where}: {target} (no such file)")
            elif fragment and dest.endswith(".md") and fragment not in anchors(dest):
                broken.append(f"{where}: {target} (no heading #{fragment})")
    for b in broken:
        print(b)
    print(f"{len(broken)} broken links" if broken else "every relative link resolves")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
