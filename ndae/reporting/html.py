"""`report.html` beside a `report.md`: one self-contained file to share (figures embedded as
base64 PNG, styles inline, nothing fetched), from the subset of Markdown the project's reports
use: headings, paragraphs, `-` lists, pipe tables, images, **bold**, *italic*, `code`, links.

A small converter rather than a Markdown library: the reports use only this subset, and the
converter must refuse to link anything outside the file (a link becomes its text).
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from ndae.io import atomic_write_text

STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1.5em; color: #1b1b1b; line-height: 1.5; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { border-bottom: 1px solid #bbb; padding-bottom: .15em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .9em; display: block; overflow-x: auto; }
th, td { border: 1px solid #c8c8c8; padding: .3em .6em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
tr:nth-child(even) td { background: #fafafa; }
code { background: #f3f3f3; padding: 0 .25em; border-radius: 3px; font-size: .92em; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: .85em; color: #555; }
.missing { color: #a00; }
"""

_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")
_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")


def _inline(text: str) -> str:
    """Escape, then the inline marks; code spans first so nothing inside them is interpreted."""
    parts = re.split(r"(`[^`]*`)", text)
    out = []
    for part in parts:
        if part.startswith("`") and part.endswith("`") and len(part) >= 2:
            out.append(f"<code>{html.escape(part[1:-1])}</code>")
            continue
        part = html.escape(part, quote=False)
        part = _LINK.sub(lambda m: f"{m.group(1)} (<code>{m.group(2)}</code>)", part)
        part = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", part)
        part = re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"<em>\1</em>", part)
        out.append(part)
    return "".join(out)


def _image(alt: str, src: str, base: Path) -> str:
    path = (base / src).resolve()
    caption = html.escape(alt)
    if src.startswith(("http:", "https:", "//", "data:")) or not path.is_file() or path.suffix.lower() != ".png":
        return f'<p class="missing">figure not available: {caption} ({html.escape(src)})</p>'
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img alt="{html.escape(alt, quote=True)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{caption}</figcaption></figure>")


def _table(rows: list[str]) -> str:
    def cells(row: str) -> list[str]:
        row = row.strip().strip("|")
        return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", row)]

    separator = len(rows) > 1 and re.fullmatch(r"[|\s:-]+", rows[1]) is not None
    header, body = cells(rows[0]), [cells(r) for r in rows[(2 if separator else 1):]]
    lines = ["<table>", "<thead><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in header) + "</tr></thead>", "<tbody>"]
    lines += ["<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in body]
    return "\n".join(lines + ["</tbody></table>"])


def markdown_to_html(text: str, base: Path) -> str:
    """The body's HTML; images are read from `base` (the report's folder) and embedded."""
    out: list[str] = []
    paragraph: list[str] = []
    items: list[str] = []
    lines = text.splitlines()

    def flush() -> None:
        if paragraph:
            out.append(_paragraph(" ".join(paragraph), base))
            paragraph.clear()
        if items:
            out.append("<ul>" + "".join(f"<li>{_with_images(i, base)}</li>" for i in items) + "</ul>")
            items.clear()

    index = 0
    while index < len(lines):
        line = lines[index].rstrip()
        stripped = line.strip()
        heading = re.match(r"^(#{1,6})\s+(.*)$", stripped)
        if not stripped:
            flush()
        elif heading:
            flush()
            level = len(heading.group(1))
            out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif stripped.startswith("|"):
            flush()
            block = []
            while index < len(lines) and lines[index].strip().startswith("|"):
                block.append(lines[index].strip())
                index += 1
            out.append(_table(block))
            continue
        elif re.match(r"^[-*]\s+", stripped):
            if paragraph:
                flush()
            items.append(re.sub(r"^[-*]\s+", "", stripped))
        elif items and line.startswith((" ", "\t")):
            items[-1] += " " + stripped  # a list item's continuation line
        else:
            if items:
                flush()
            paragraph.append(stripped)
        index += 1
    flush()
    return "\n".join(out)


def _with_images(text: str, base: Path) -> str:
    pieces, last = [], 0
    for match in _IMAGE.finditer(text):
        pieces.append(_inline(text[last:match.start()]))
        pieces.append(_image(match.group(1), match.group(2), base))
        last = match.end()
    pieces.append(_inline(text[last:]))
    return "".join(pieces)


def _paragraph(text: str, base: Path) -> str:
    # a paragraph that opens with its only figure: the text after it is the figure's caption
    # (a <figure> inside a <p> is invalid HTML, and browsers would split them apart)
    match = _IMAGE.match(text)
    if match and len(_IMAGE.findall(text)) == 1:
        rest = text[match.end():].strip()
        return _image(f"{match.group(1)} {rest}".strip(), match.group(2), base)
    return f"<p>{_with_images(text, base)}</p>"


def report_html(markdown_path: str | Path) -> str:
    """The whole self-contained document for a report.md."""
    path = Path(markdown_path)
    text = path.read_text(encoding="utf-8")
    title = next((line[2:].strip() for line in text.splitlines() if line.startswith("# ")), path.stem)
    body = markdown_to_html(text, path.parent)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"<style>{STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def write_report_html(markdown_path: str | Path) -> Path:
    """Write `<name>.html` beside `<name>.md` (atomically); returns its path."""
    path = Path(markdown_path)
    target = path.with_suffix(".html")
    atomic_write_text(target, report_html(path))
    return target
