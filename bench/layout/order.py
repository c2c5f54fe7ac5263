#!/usr/bin/env python3
"""Write a linker symbol-ordering file from callgrind profiles of the sidecar.

    order.py OUT BINARY CALLGRIND_OUT [CALLGRIND_OUT ...]

Takes every function of BINARY that ran in the profiles (run under
`valgrind --tool=callgrind --demangle=no`), and writes their (mangled) symbol names to OUT, the
most expensive first (self instructions, summed over the profiles), then the names of the
previous OUT that the binary still has but these profiles did not see run (a path a run happens
not to take, such as a stream reset), so that the list grows with every refresh. lld's
`--symbol-ordering-file` then places them at the start of .text, together, so the code the
sidecar runs sits in a few hundred KB instead of being spread over the whole text segment.
"""
import collections
import os
import re
import subprocess
import sys


def profile(path: str, binary: str, cost: collections.Counter) -> None:
    names = {"ob": {}, "fn": {}}
    ob = fn = None
    after_call = False
    for line in open(path, errors="replace"):
        m = re.match(r"^(c?)(ob|fn|fl|fi|fe|cfi|cfl)=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
        if m:
            called, kind, ident, name = m.groups()
            if kind in ("ob", "fn"):
                if name is not None:
                    names[kind][ident] = name
                if not called:
                    if kind == "ob":
                        ob = names["ob"].get(ident)
                    else:
                        fn = names["fn"].get(ident)
            continue
        if line.startswith("calls="):
            after_call = True
            continue
        if line[:1].isdigit() or line[:1] in "+-*":
            if after_call:  # the inclusive cost of a call, not this function's own
                after_call = False
                continue
            parts = line.split()
            if len(parts) >= 2 and fn and ob and os.path.basename(ob) == binary:
                cost[fn] += int(parts[1])
    # Functions only ever called (cfn) with no cost line of their own still ran.
    for name in names["fn"].values():
        cost.setdefault(name, 0)


def symbols(binary: str) -> set[str]:
    """The names of the code symbols in BINARY's symbol table."""
    out = subprocess.run(["nm", binary], capture_output=True, text=True, check=True).stdout
    return {f[2] for f in (line.split() for line in out.splitlines())
            if len(f) == 3 and f[1] in "tTwW"}


def main() -> None:
    out, binary, *profiles = sys.argv[1:]
    raw: collections.Counter = collections.Counter()
    for p in profiles:
        profile(p, os.path.basename(binary), raw)
    cost: collections.Counter = collections.Counter()
    for name, ir in raw.items():  # callgrind marks recursion levels as name'2, name'3
        cost[name.split("'")[0]] += ir
    known = symbols(binary)
    syms = [n for n, _ in sorted(cost.items(), key=lambda kv: -kv[1]) if n in known]
    if os.path.exists(out):
        seen = set(syms)
        syms += [n for n in open(out).read().split() if n in known and n not in seen]
    with open(out, "w") as f:
        f.write("\n".join(syms) + "\n")
    print(f"{out}: {len(syms)} symbols", file=sys.stderr)


if __name__ == "__main__":
    main()
