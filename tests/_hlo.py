"""Reading compiled HLO in tests: which instructions a step runs, and the largest array they define."""

from __future__ import annotations

import re

import numpy as np

_SHAPE = re.compile(r"\b(?:pred|bf16|[suf]\d+)\[([\d,]*)\]")
_CALLED = re.compile(r"(?:calls|to_apply|body|condition)=%([\w.\-]+)")
_HEADER = re.compile(r"^(ENTRY )?%([\w.\-]+) ")


def computations(hlo: str) -> tuple[dict[str, list[str]], str]:
    """Each computation's instruction lines by name, and the entry computation's name."""
    comps, entry, current = {}, None, None
    for line in hlo.splitlines():
        s = line.strip()
        head = _HEADER.match(s)
        if head and s.endswith("{"):
            current = comps[head.group(2)] = []
            entry = head.group(2) if head.group(1) else entry
        elif s == "}":
            current = None
        elif current is not None and s:
            current.append(s)
    return comps, entry


def reachable(hlo: str, normal_only: bool) -> list[str]:
    """Instructions of the computations a step runs; ``normal_only``: taking the false (index 0)
    branch of every conditional, i.e. a step where no mask update and no scoring happens."""
    comps, entry = computations(hlo)
    seen, todo = set(), [entry]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for ins in comps[name]:
            branches = re.search(r"branch_computations=\{([^}]*)\}", ins)
            if branches:
                names = [b.strip().lstrip("%") for b in branches.group(1).split(",")]
                todo += names[:1] if normal_only else names
            todo += re.findall(r"(?:true|false)_computation=%([\w.\-]+)", ins)
            todo += _CALLED.findall(ins)
            called = re.search(r"calls=\{([^}]*)\}", ins)
            if called:
                todo += [c.strip().lstrip("%") for c in called.group(1).split(",")]
    return [ins for name in seen for ins in comps[name]]


def largest_buffer(instructions: list[str]) -> int:
    """Largest element count of any array an instruction defines."""
    largest = 0
    for ins in instructions:
        result = ins.split(" = ", 1)[1].split("(", 1)[0] if " = " in ins else ""
        for dims in _SHAPE.findall(result):
            largest = max(largest, int(np.prod([int(d) for d in dims.split(",") if d])))
    return largest
