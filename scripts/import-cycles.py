#!/usr/bin/env python3
"""Fails when the modules of a crate import each other in a circle (stdlib only).

    python3 scripts/import-cycles.py            # every crate of the workspace; exit 1 on a cycle

A module is a file under <crate>/src (`a/b.rs` and `a/b/mod.rs` are `a::b`); it imports another
when its text names `crate::<module>` or, from a submodule, `super::<module>` (tests modules
included: a test that needs a circle is a design smell too; comments are not). Prints each cycle.
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CRATES = ["engine", "harness", "reports", "serve"]


def modules(src):
    """{module path: text} for every .rs file of a crate's src folder."""
    out = {}
    for f in sorted(src.rglob("*.rs")):
        parts = list(f.relative_to(src).with_suffix("").parts)
        if parts[-1] == "mod":
            parts.pop()
        if parts in (["lib"], ["main"]):
            continue
        # Code only: a doc comment's [`crate::x`] link is not an import.
        out["::".join(parts)] = "\n".join(line for line in f.read_text().splitlines() if not line.lstrip().startswith("//"))
    return out


def edges(mods):
    """{module: modules it names}, resolved to the longest known module path."""
    graph = {m: set() for m in mods}
    for m, text in mods.items():
        parent = m.rsplit("::", 1)[0] if "::" in m else ""
        for kind, path in re.findall(r"\b(crate|super)::((?:\w+::)*\w+)", text):
            base = path.split("::")
            if kind == "super":
                base = (parent.split("::") if parent else []) + base
            for n in range(len(base), 0, -1):
                target = "::".join(base[:n])
                if target in mods and target != m and not target.startswith(m + "::") and not m.startswith(target + "::"):
                    graph[m].add(target)
                    break
    return graph


def cycles(graph):
    """Every elementary cycle's members, once each (as sorted tuples), by depth-first search."""
    found = set()

    def visit(node, stack, on_stack):
        for nxt in graph[node]:
            if nxt in on_stack:
                found.add(tuple(sorted(stack[stack.index(nxt) :])))
            elif len(stack) < 12:
                visit(nxt, stack + [nxt], on_stack | {nxt})

    for start in graph:
        visit(start, [start], {start})
    return sorted(found)


def main():
    bad = 0
    for crate in CRATES:
        for cycle in cycles(edges(modules(ROOT / crate / "src"))):
            print(f"import-cycles: {crate}: {' <-> '.join(cycle)}")
            bad += 1
    if bad:
        sys.exit(1)
    print(f"import-cycles: no circles among the modules of {', '.join(CRATES)}")


if __name__ == "__main__":
    main()
