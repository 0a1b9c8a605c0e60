"""``report.html``: one version's training run on one page, readable without a server.

The page is self-contained (plots embedded as base64 PNG, no scripts, no
links out) so it can be mailed or opened from the version directory. It is
drawn before the version is committed, from the manifest (with the gate's
verdict) and the version as serving holds it, so the sample picks are the
served ones (:class:`recommender.answers.Answerer`).
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import numpy as np

from recommender.answers import Answerer, AnswerError, timing_table
from recommender.store.bundle import Bundle

RANKING_COLUMNS = ("ndcg@10", "recall@20", "map@10", "coverage@10", "customers")
TIMING_COLUMNS = ("rmse", "mae", "brier", "auc", "total_predicted", "total_actual")
SAMPLE_CUSTOMERS = 5


def _e(x: Any) -> str:
    return html.escape(str(x))


def _f(v: Any, digits: int = 4) -> str:
    if isinstance(v, bool) or v is None:
        return "-" if v is None else str(v)
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return _e(v)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(png: bytes | None, alt: str) -> str:
    if not png:
        return f"<p><em>{_e(alt)}: not drawn.</em></p>"
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _histogram_png(values: np.ndarray, title: str, xlabel: str) -> bytes | None:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.hist(np.minimum(values, 365), bins=40, color="#4a7ab5")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("customers")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _data_section(m: dict[str, Any]) -> str:
    v, d = m.get("validation") or {}, m.get("data") or {}
    rows = [
        ["rows read", _f(v.get("rows_read"))],
        ["rows kept", _f(v.get("rows_kept"))],
        ["rows dropped", _f(v.get("rows_dropped"))],
    ]
    rows += [[f"&nbsp;&nbsp;dropped: {_e(k)}", _f(n)] for k, n in (v.get("dropped") or {}).items()]
    rows += [
        ["customers", _f(d.get("customers"))],
        ["items", _f(d.get("items"))],
        ["time range", f"{_e(d.get('time_min'))} .. {_e(d.get('time_max'))}"],
        ["trained as of", _e(m.get("as_of"))],
    ]
    return "<h2>The data</h2>" + _table(["", ""], rows)


def _gate_section(m: dict[str, Any]) -> str:
    g = m.get("gate")
    if not g:
        return "<h2>Promotion gate</h2><p>Not judged.</p>"
    against = g.get("compared_with") or "none (the store's first version)"
    out = (
        f"<h2>Promotion gate: <span class='{_e(g.get('status', '')).replace(' ', '-')}'>"
        f"{_e(g.get('status'))}</span></h2><p>Compared with: {_e(against)}; "
        f"method: {_e(g.get('method') or '-')}</p>"
    )
    if g.get("reasons"):
        out += "<ul>" + "".join(f"<li>{_e(r)}</li>" for r in g["reasons"]) + "</ul>"
    rows = [
        [_e(c.get("check")), "ok" if c.get("ok") else "<b>FAILED</b>", _e(c.get("detail"))]
        for c in g.get("checks", [])
    ]
    return out + _table(["check", "result", "figures"], rows)


def _ranking_section(m: dict[str, Any]) -> str:
    ranking = (m.get("metrics") or {}).get("ranking") or {}
    if not ranking:
        return "<h2>Ranking</h2><p>No ranking model in this version.</p>"
    rows = [[_e(name), *(_f(fig.get(c)) for c in RANKING_COLUMNS)] for name, fig in ranking.items()]
    w = (m.get("metrics") or {}).get("ranking_window") or {}
    out = (
        "<h2>Ranking against the baselines</h2>"
        f"<p>Held-out window {_e(w.get('start'))} .. {_e(w.get('end'))}; every model on the "
        "same customers.</p>" + _table(["model", *RANKING_COLUMNS], rows)
    )
    checks = {c["check"]: c for c in (m.get("gate") or {}).get("checks", [])}
    vs = checks.get("ranking vs current")
    if vs is not None:
        out += "<h3>Against the previous version</h3>" + _table(
            ["", "this version", "current version", "tolerance"],
            [
                [
                    _e((m.get("gate") or {}).get("method") or ""),
                    _f(vs.get("candidate")),
                    _f(vs.get("current")),
                    _f(vs.get("tolerance"), 2),
                ]
            ],
        )
    cov = checks.get("picks not collapsed")
    share = checks.get("most recommended item")
    if cov is not None:
        out += (
            "<h3>Catalogue coverage</h3><p>"
            f"The top-10 lists of customers active in the window show "
            f"{_f(cov.get('distinct_items'))} distinct items ({_f(cov.get('coverage'), 3)} of "
            "the catalogue)"
            + (
                f"; the most recommended item is in {_f(share.get('top_item_share'), 3)} of them"
                if share
                else ""
            )
            + ".</p>"
        )
    return out


def _timing_section(m: dict[str, Any], bundle: Bundle, calibration: bytes | None) -> str:
    t = (m.get("metrics") or {}).get("timing")
    if not t:
        return "<h2>Next purchase</h2><p>No next-purchase model judged in this version.</p>"
    rows = [["encore (" + _e(t.get("model")) + ")", *(_f(t.get(c)) for c in TIMING_COLUMNS)]]
    for name, fig in (t.get("baselines") or {}).items():
        rows.append([_e(name), *(_f(fig.get(c)) for c in TIMING_COLUMNS)])
    out = (
        f"<h2>Next purchase</h2><p>Judged on the last {_f(t.get('horizon_days'), 0)} days "
        f"({_f(t.get('customers'))} customers).</p>"
        + _table(["estimator", *TIMING_COLUMNS], rows)
        + "<h3>Calibration</h3>"
        + _img(calibration, "calibration plot")
    )
    if bundle.timing is not None:
        days = timing_table(bundle, np.arange(bundle.n_customers), 30.0, rounded=False)
        png = _histogram_png(
            days["median_days_to_next"].to_numpy(dtype=float),
            "Predicted days to the next purchase (median, capped at 365)",
            "days",
        )
        out += "<h3>Predicted days to the next purchase</h3>" + _img(png, "histogram")
    return out


def _samples_section(bundle: Bundle, seed: int) -> str:
    if bundle.n_customers == 0:
        return ""
    answerer = Answerer(bundle)
    rng = np.random.default_rng(seed)
    rows = rng.choice(bundle.n_customers, min(SAMPLE_CUSTOMERS, bundle.n_customers), replace=False)
    out = "<h2>Sample customers' picks (as served)</h2>"
    for row in sorted(int(r) for r in rows):
        cid = bundle.customers.id(row)
        try:
            answer = answerer.for_customer(cid, 5)
        except AnswerError as exc:
            out += f"<p>{_e(cid)}: {_e(exc.message)}</p>"
            continue
        bought = bundle.history[row].indices
        picks = [
            [
                _e(bundle.items.id(p.item_row)),
                _e(bundle.catalog.title[p.item_row]),
                _e(bundle.catalog.category[p.item_row]),
                _e(p.reason),
            ]
            for p in answer.picks
        ]
        out += (
            f"<h3>Customer {_e(cid)}</h3><p>{len(bought)} distinct items bought; "
            f"strategy {_e(answer.strategy)}</p>"
            + _table(["item", "title", "category", "reason"], picks)
        )
    return out


STYLE = """
body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .5em;
text-align:left}th{background:#f3f3f3}.passed{color:#17702a}.held-back{color:#b00020}
.forced{color:#a15c00}img{max-width:100%}
"""


def render_report(bundle: Bundle, calibration: bytes | None = None, *, seed: int = 0) -> bytes:
    """The page for ``bundle`` (its manifest holds the metrics and the gate's verdict)."""
    m = bundle.manifest
    g = (m.get("gate") or {}).get("status", "not judged")
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Encore model {_e(bundle.version)}</title><style>{STYLE}</style></head><body>",
        f"<h1>Model version {_e(bundle.version)}</h1>",
        f"<p>Trained {_e(m.get('created_at'))}, as of {_e(m.get('as_of'))}; gate: "
        f"<b>{_e(g)}</b>; {bundle.n_customers:,} customers, {bundle.n_items:,} items.</p>",
    ]
    if m.get("warnings"):
        parts.append(
            "<h2>Warnings</h2><ul>" + "".join(f"<li>{_e(w)}</li>" for w in m["warnings"]) + "</ul>"
        )
    parts += [
        _gate_section(m),
        _data_section(m),
        _ranking_section(m),
        _timing_section(m, bundle, calibration),
        _samples_section(bundle, seed),
        "</body></html>",
    ]
    return "\n".join(parts).encode("utf-8")
