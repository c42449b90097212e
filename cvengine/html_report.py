"""Evaluation reports: one self-contained HTML file per evaluation (images inlined as base64)."""
from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path

import numpy as np


def png_of_figure(figure) -> str:
    """A matplotlib figure as a `data:` URI (PNG), the figure closed."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def jpeg_of_image(image: np.ndarray, max_side: int = 360) -> str:
    """(H, W, 3) uint8 RGB, scaled down to `max_side`, as a `data:` URI (JPEG)."""
    from PIL import Image

    picture = Image.fromarray(image)
    picture.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def table(header: list[str], rows: list[list], number_format: str = "{:.3f}") -> str:
    def cell(v):
        if isinstance(v, float):
            return "—" if np.isnan(v) else number_format.format(v)
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
figure {{ display: inline-block; margin: 0.5em; vertical-align: top; }}
figcaption {{ font-size: 0.8em; max-width: 360px; word-break: break-all; }}
.note {{ color: #666; font-size: 0.9em; }}
</style></head><body>
<h1>{title}</h1>
{body}
</body></html>
"""


def page(title: str, body: str) -> str:
    return PAGE.format(title=html.escape(title), body=body)


def write_page(out_dir: str | os.PathLike, title: str, sections: list[str]) -> str:
    """`out_dir/report.html`, written atomically; returns its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.html"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page(title, "\n".join(sections)))
    os.replace(tmp, path)
    return str(path)
