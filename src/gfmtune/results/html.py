"""HTML renderings of the results' tables for Snakemake's report: a page that opens on its own
(the report shows it when its entry is clicked) and that the report's landing page includes as
it is (``rules/captions/workflow.rst``). Everything sits in one ``<div class="gfmtune">`` whose
style rules are scoped to it, so that included in the landing page it changes nothing else
there; the landing page drops the ``html``, ``head`` and ``body`` tags."""

from __future__ import annotations

from html import escape

#: Scoped to ``.gfmtune``: the report's own styles reset tables (no borders, no padding).
STYLE = """
.gfmtune { font-family: sans-serif; font-size: 13px; line-height: 1.35; color: #111;
  background: #fff; padding: 8px; margin: 12px 0; overflow-x: auto; }
.gfmtune h2 { font-size: 16px; font-weight: bold; margin: 4px 0 8px; }
.gfmtune p { margin: 4px 0 8px; max-width: 110ch; }
.gfmtune .caveat { color: #8b0000; background: #fde8e8; border: 2px solid #b22222;
  padding: 6px 8px; font-weight: bold; }
.gfmtune table { border-collapse: collapse; margin: 6px 0; width: auto; }
.gfmtune th, .gfmtune td { border: 1px solid #bbb; padding: 3px 6px; vertical-align: top;
  text-align: left; max-width: 32em; }
.gfmtune thead th { background: #eee; text-align: center; }
.gfmtune tbody th { font-weight: bold; min-width: 8em; }
.gfmtune td.num { text-align: right; white-space: nowrap; }
.gfmtune tbody tr:nth-child(even) td { background: #f7f7f7; }
"""


def text(value: object) -> str:
    """``value`` as HTML text."""
    return escape(str(value))


def caveat(note: str) -> str:
    """The run's caveat (synthetic data, tiny models) as a red box; "" without one."""
    return f'<p class="caveat">{text(note)}</p>\n' if note else ""


def table(head: list[list[tuple[str, int]]], rows: list[list[tuple[str, str]]]) -> str:
    """A table: ``head`` rows of (text, column span); ``rows`` of (HTML, class) cells, the
    first of each a row header."""
    lines = ["<table>", "<thead>"]
    for row in head:
        cells = ((f'<th colspan="{n}">' if n > 1 else "<th>") + f"{text(t)}</th>" for t, n in row)
        lines.append("<tr>" + "".join(cells) + "</tr>")
    lines += ["</thead>", "<tbody>"]
    for row in rows:
        cells = []
        for i, (content, kind) in enumerate(row):
            tag = "th" if i == 0 else "td"
            attribute = f' class="{kind}"' if kind else ""
            cells.append(f"<{tag}{attribute}>{content}</{tag}>")
        lines.append("<tr>" + "".join(cells) + "</tr>")
    lines += ["</tbody>", "</table>"]
    return "\n".join(lines) + "\n"


def page(title: str, body: str, note: str = "") -> str:
    """A whole HTML page: ``title`` as heading, the caveat ``note`` (if any), then ``body``
    (HTML)."""
    return (
        '<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8">\n'
        f"<title>{text(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        f'<div class="gfmtune">\n<h2>{text(title)}</h2>\n{caveat(note)}{body}</div>\n'
        "</body>\n</html>\n"
    )
