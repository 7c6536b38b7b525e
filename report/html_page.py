"""report.html: the report as one self-contained page, for a lab meeting. The tables as HTML
tables and the plots embedded as base64 PNGs: no script, no stylesheet or image from elsewhere, so
it opens from disk in any browser, with no server."""
import base64
import html

STYLE = """body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.85em; }
th, td { border: 1px solid #bbb; padding: 0.2em 0.5em; text-align: left; white-space: nowrap; }
th { background: #eee; }
tbody tr:nth-child(even) { background: #f7f7f7; }
figure { display: inline-block; margin: 0.5em; }
figcaption { font-size: 0.8em; color: #555; }
img { max-width: 100%; }"""


def table_html(headers, lines):
    out = ["<table>", "<thead>", "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + "</tr>",
           "</thead>", "<tbody>"]
    out += ["<tr>" + "".join(f"<td>{html.escape(text)}</td>" for text in line) + "</tr>" for line in lines]
    out += ["</tbody>", "</table>"]
    return "\n".join(out)


def figure_html(path):
    """A PNG embedded in the page as a data URI."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    name = html.escape(path.name)
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{name}">'
            f"<figcaption>{name}</figcaption></figure>")


def page(title, sections, plots):
    """The page's text. sections: [(heading, note, headers, lines)]; plots: PNG paths."""
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           f"<title>{html.escape(title)}</title>", f"<style>\n{STYLE}\n</style>", "</head>", "<body>",
           f"<h1>{html.escape(title)}</h1>"]
    for heading, note, headers, lines in sections:
        out.append(f"<h2>{html.escape(heading)}</h2>")
        if note:
            out.append(f"<p>{html.escape(note)}</p>")
        out.append(table_html(headers, lines))
    if plots:
        out.append("<h2>Plots</h2>")
        out += [figure_html(path) for path in plots]
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"
