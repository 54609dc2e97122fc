"""A sweep's report as one HTML file: summary, best runs, then the plots, with plotly.js inside it.

The page needs no network: plotly.js (a few MB) is written into the file once, and each plot is
a `Plotly.newPlot` call on the figure data `infra.sweep.report` decided.
"""

from __future__ import annotations

import html
import time

from ..sweep.report import ReportData

PAGE_STYLE = """
body { font-family: "Liberation Sans", Arial, sans-serif; margin: 24px; color: #222; background: #fff; }
h1 { font-size: 22px; margin: 0 0 6px 0; }
h2 { font-size: 17px; margin: 28px 0 6px 0; }
p.summary { font-size: 15px; margin: 4px 0 14px 0; }
p.meta, p.note { color: #666; font-size: 12px; margin: 2px 0; }
table.best { border-collapse: collapse; font-size: 13px; }
table.best th, table.best td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; }
table.best th { background: #f3f3f3; }
table.best tr.first td { font-weight: bold; background: #fff7d6; }
.plot { width: 100%; max-width: 1400px; }
"""


def _figure_html(spec: dict, div_id: str) -> str:
    import plotly.io as pio

    return pio.to_html(spec, full_html=False, include_plotlyjs=False, div_id=div_id,
                       config={"displaylogo": False, "responsive": True}, default_width="100%",
                       default_height=f"{spec.get('layout', {}).get('height', 400)}px", validate=True)


def render_report_html(report: ReportData, *, source: str = "", generated_at: float | None = None) -> str:
    """The whole page, plotly.js inline: opens from disk with no network."""
    from plotly.offline import get_plotlyjs

    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(generated_at if generated_at is not None else time.time()))
    escape = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>sweep {escape(report.name)}</title>",
        f"<style>{PAGE_STYLE}</style>",
        f'<script type="text/javascript">{get_plotlyjs()}</script>',
        "</head><body>",
        f"<h1>sweep {escape(report.name)}</h1>",
        f'<p class="summary" id="summary">{escape(report.summary_line())}</p>',
        f'<p class="meta">generated {escape(when)} by infra'
        + (f" from {escape(source)}" if source else "") + "; regenerate with "
        f"<code>infra sweep report {escape(report.name)}</code></p>",
    ]
    for note in report.notes:
        parts.append(f'<p class="note">{escape(note)}</p>')
    if report.table_rows:
        title = f"best {len(report.table_rows)} runs"
        if report.objective is not None:
            title += f" by {report.objective.describe()}"
        parts += [f"<h2>{escape(title)}</h2>", '<table class="best" id="best-runs"><thead><tr>']
        parts += [f"<th>{escape(header)}</th>" for header in report.table_header]
        parts.append("</tr></thead><tbody>")
        for position, cells in enumerate(report.table_rows):
            parts.append('<tr class="first">' if position == 0 else "<tr>")
            parts += [f"<td>{escape(cell)}</td>" for cell in cells]
            parts.append("</tr>")
        parts.append("</tbody></table>")
    for number, figure in enumerate(report.figures, start=1):
        parts.append(f'<div class="plot" id="figure-{escape(figure.key)}"><h2>{escape(figure.title)}</h2>')
        parts.append(_figure_html(figure.spec, f"plot-{number}"))
        if figure.note:
            parts.append(f'<p class="note">{escape(figure.note)}</p>')
        parts.append("</div>")
    parts += ["</body></html>", ""]
    return "\n".join(parts)
