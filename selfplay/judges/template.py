"""The pairwise / llm judge prompt template: a `str.format` template over exactly
{prompt}, {a} and {b}.

Checked by parsing, never by formatting user text: `string.Formatter().parse`
yields each replacement field with its format spec, and a spec may itself hold
fields (`{a:{b}}` formats {a} with the text of {b} as its spec, which fails or
misbehaves on real responses; `{a:{__class__}}` names a field that is not given).
So the spec of every field is parsed too, recursively: a field inside a spec is
refused whatever its name, and every field anywhere must be a plain known name
(no attribute or index: `{a.x}`, `{a[0]}` are unknown fields). What is left
(a conversion `!r`, a spec `:>10`) must format text.
"""

from __future__ import annotations

import string

TEMPLATE_FIELDS = ("prompt", "a", "b")


def _fields(template: str) -> list[str]:
    """The name of every replacement field; one inside the format spec of field `a`
    as "a:{name}" (ValueError from the parser for unbalanced braces)."""
    out = []
    for _, name, spec, _ in string.Formatter().parse(template):
        if name is None:
            continue
        out.append(name)
        if spec:
            out.extend(f"{name}:{{{n.partition(':')[0]}}}" for n in _fields(spec))
    return out


def template_problem(template: str) -> str | None:
    """Why `template` is not a judge template (one phrase), or None when it is one:
    fields {prompt}, {a}, {b} only, each of {a}, {b} at least once, no field inside a
    format spec, literal braces doubled."""
    try:
        fields = _fields(template)
    except ValueError as e:
        return f"cannot be formatted ({e})"
    for name in fields:
        if ":" in name:  # a field inside a format spec
            outer, _, inner = name.partition(":")
            if inner.strip("{}") not in TEMPLATE_FIELDS:
                return f"unknown field {inner} in the format spec of {{{outer}}}"
            return (
                f"{{{outer}:{inner}}} puts a field inside a format spec; "
                "use {prompt}, {a}, {b} as plain fields"
            )
        if name not in TEMPLATE_FIELDS:
            return f"unknown field {{{name}}}; use {{prompt}}, {{a}}, {{b}}"
    if not {"a", "b"} <= set(fields):
        return "must contain both {a} and {b}"
    try:  # plain known fields only now: what is left is a bad conversion or spec
        template.format(prompt="p", a="a", b="b")
    except ValueError as e:
        return f"cannot be formatted ({e})"
    return None
