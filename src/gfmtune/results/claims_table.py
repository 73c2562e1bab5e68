"""The checked claims (:mod:`gfmtune.results.claims`) as a table, in Markdown (``claims.md``)
and HTML (``claims.html``, for the report): notes on how the verdicts were reached and what each
column holds, then one row per claim with its verdict, what it was decided on, its rule, the
rule's statistic with its unit and interval, the same on the published numbers, and the
evidence."""

from __future__ import annotations

from gfmtune.results import html
from gfmtune.results.claims import BOOTSTRAP, POINT, POINTS, UNDISTINGUISHABLE

#: Column headings.
STATISTIC = "statistic [95 % interval]"
DECIDED = "decided on"
PUBLISHED = "published: verdict (rule's statistic on the paper's numbers)"


def decided_on_text(used: dict) -> str:
    """``12 cells: CROMA 0.0, DINO 0.0/1.0, U-TAE; 100 %; t = 6, 15``, then the paper's models
    it lacks (``no CROMA cells``); ``no cells`` when there were none."""
    cells = {0: "no cells", 1: "1 cell"}.get(used["cells"], f"{used['cells']} cells")
    if used["cells"]:
        per_model: dict[str, list[str]] = {}
        for label in used["rows"]:
            model, _, ft = label.partition(" ")
            per_model.setdefault(model, []).append(ft)
        rows = ", ".join(m + (" " + "/".join(f) if any(f) else "") for m, f in per_model.items())
        fractions = ", ".join(f"{p:g} %" for p in used["label_percents"])
        frames = ", ".join(str(t) for t in used["timesteps"])
        cells = f"{cells}: {rows}; {fractions}; t = {frames}"
    if used["missing"]:
        cells += "; no " + " or ".join(used["missing"]) + " cells in this run"
    return cells


def _notes(claims: list[dict]) -> list[str]:
    """How the verdicts were reached and what the columns hold."""
    bases = {c["basis"] for c in claims}
    notes = []
    if BOOTSTRAP in bases:
        notes.append(
            f"Verdicts from a {BOOTSTRAP}: supported when the interval of the rule's statistic "
            f"lies entirely on the side the rule needs, contradicted when entirely on the "
            f"other, else {UNDISTINGUISHABLE} (the data cannot tell)."
        )
    if POINT in bases:
        notes.append(
            "Point estimates only: some cells of this run have no per-patch test counts "
            "(test_patches.npz, older runs), so no interval can be computed; true or false "
            "compare the point value of the rule's statistic with its threshold."
        )
    notes.append(
        f"{STATISTIC}: the rule's statistic on this run's cells, in mIoU points (paper "
        "convention) or, for a relative gain, in %. "
        f"{DECIDED}: the cells of this run that entered it (rows as model and FT-Rate, label "
        "fractions, frames); a claim about models the run has no cells of is decided on the "
        "others, and says which it lacks."
    )
    if any("published" in c for c in claims):
        notes.append(
            f"{PUBLISHED}: the same claim checked on the published numbers. They are one value "
            "per cell without per-patch data, so only as a point estimate: true or false, then "
            "the rule's statistic computed on them, in the rule's unit."
        )
    return notes


def _value(c: dict, unit: str) -> str:
    """``0.96 [0.50, 1.20] points``; ``–`` without a value."""
    if c["value"] is None:
        return "–"
    bounds = "" if c["interval"] is None else " [{:.2f}, {:.2f}]".format(*c["interval"])
    return f"{c['value']:.2f}{bounds} {unit}"


def _rows(claims: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Column headings and one row of plain text per claim; column 1 holds the verdict alone,
    ``(point estimate)`` for a point verdict is the renderers' to add (:func:`_verdict`)."""
    published = any("published" in c for c in claims)
    head = ["claim", "verdict", DECIDED, "rule", STATISTIC]
    head += [PUBLISHED] if published else []
    rows = []
    for c in claims:
        unit = c.get("unit", POINTS)
        used = decided_on_text(c["decided_on"]) if "decided_on" in c else "–"
        cells = [c["claim"], c["verdict"], used, c["rule"], _value(c, unit)]
        if published:
            theirs = c["published"]
            cells.append(f"{theirs['verdict']} ({_value(theirs, unit)})")
        evidence = "; ".join(f"{k}: {v}" for k, v in c["evidence"].items()) or "–"
        rows.append([*cells, evidence])
    return [*head, "evidence"], rows


def _verdict(claim: dict, bold: tuple[str, str], escape=str) -> str:
    """The verdict in ``bold``, then ``(point estimate)`` for a point verdict."""
    text = f"{bold[0]}{escape(claim['verdict'])}{bold[1]}"
    return text + (" (point estimate)" if claim["basis"] == POINT else "")


def to_markdown(claims: list[dict]) -> str:
    """Notes on how the verdicts were reached, then one row per claim."""
    head, rows = _rows(claims)
    lines = [*(f"{n}\n" for n in _notes(claims)), "| " + " | ".join(head) + " |"]
    lines.append("|---" * len(head) + "|")
    for c, cells in zip(claims, rows, strict=True):
        cells[1] = _verdict(c, ("**", "**"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_html(claims: list[dict], note: str = "") -> str:
    """What :func:`to_markdown` says, as an HTML page (:mod:`gfmtune.results.html`) that
    opens with the run's caveat ``note``."""
    head, rows = _rows(claims)
    body = "".join(f"<p>{html.text(n)}</p>\n" for n in _notes(claims))
    cells = [[(html.text(v), "num" if i == 4 else "") for i, v in enumerate(row)] for row in rows]
    for c, row in zip(claims, cells, strict=True):
        row[1] = (_verdict(c, ("<strong>", "</strong>"), html.text), "")
    table = html.table([[(h, 1) for h in head]], cells)
    return html.page("The paper's claims decided on this run", body + table, note)
