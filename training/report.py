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

from recommender.answers import Answerer, AnswerError, as_of_date, likely_purchase_days
from recommender.store.bundle import Bundle

RANKING_COLUMNS = ("ndcg@10", "recall@20", "map@10", "coverage@10", "customers")
TIMING_COLUMNS = ("rmse", "mae", "brier", "auc", "total_predicted", "total_actual")
SPEND_COLUMNS = ("rmse", "mae", "total_predicted", "total_actual", "relative_bias")
SAMPLE_CUSTOMERS = 5
#: The monthly measures drawn, and how each is labelled.
HEALTH_MEASURES = (
    ("active_customers", "active customers"),
    ("repurchase_rate", "repurchase rate (share returning)"),
    ("orders_per_customer", "orders per customer"),
    ("average_order_value", "average order value"),
    ("revenue", "revenue"),
    ("returning_revenue_share", "returning customers' share of revenue"),
)


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


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _months_png(months: list[dict[str, Any]]) -> bytes | None:
    """A small multiple: one line plot per monthly measure (value measures
    left blank without prices)."""
    if not months:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 5.6), dpi=100)
    FigureCanvasAgg(fig)
    x = np.arange(len(months))
    labels = [str(mo["month"]) for mo in months]
    step = max(1, len(labels) // 6)
    for i, (key, title) in enumerate(HEALTH_MEASURES):
        ax = fig.add_subplot(2, 3, i + 1)
        y = np.array([np.nan if mo.get(key) is None else mo[key] for mo in months], dtype=float)
        ax.set_title(title, fontsize=9)
        if np.isfinite(y).any():
            ax.plot(x, y, marker="o", markersize=2.5, color="#4a7ab5")
        else:
            ax.text(0.5, 0.5, "needs prices", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks(x[::step])
        ax.set_xticklabels(labels[::step], rotation=45, fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    return _png(fig)


def _cohorts_png(cohorts: list[dict[str, Any]]) -> bytes | None:
    """The cohort retention heat map: cohorts down, months since the first order across."""
    if not cohorts:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width = max(len(c["retention"]) for c in cohorts)
    grid = np.full((len(cohorts), width), np.nan)
    for i, c in enumerate(cohorts):
        grid[i, : len(c["retention"])] = c["retention"]
    grid[:, 0] = np.nan  # always 1: it would wash out the colour scale
    fig = Figure(figsize=(9, max(2.5, 0.22 * len(cohorts) + 1.2)), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_yticks(np.arange(len(cohorts)))
    ax.set_yticklabels([f"{c['cohort']} ({c['size']:,})" for c in cohorts], fontsize=7)
    ax.set_xlabel("months since the first order")
    ax.set_title("Cohort retention: share of each month's new customers buying again")
    fig.colorbar(im, ax=ax, fraction=0.03)
    fig.tight_layout()
    return _png(fig)


def _health_section(bundle: Bundle) -> str:
    h = bundle.health
    if h is None:
        return "<h2>Shop health</h2><p>Not measured in this version.</p>"
    months = h.get("months") or []
    out = (
        "<h2>Shop health</h2><p>Per calendar month: customers who ordered, the share of them "
        "who had ordered before (repurchase rate), orders per customer, average order value, "
        "revenue and the share of it from returning customers. An order is a customer's "
        "purchase day.</p>"
    )
    out += "".join(f"<p><em>{_e(n)}</em></p>" for n in h.get("notes") or [])
    out += _img(_months_png(months), "monthly measures")
    rows = [
        [
            _e(mo["month"]),
            _f(mo["active_customers"]),
            _f(mo["repurchase_rate"], 3),
            _f(mo["orders_per_customer"], 2),
            _f(mo["average_order_value"], 2),
            _f(mo["revenue"], 2),
            _f(mo["returning_revenue_share"], 3),
        ]
        for mo in months[-12:]
    ]
    out += "<h3>The last 12 months</h3>" + _table(
        ["month", "active", "repurchase rate", "orders/customer", "avg order value", "revenue",
         "returning share"],
        rows,
    )  # fmt: skip
    out += "<h3>Cohort retention</h3>" + _img(_cohorts_png(h.get("cohorts") or []), "cohort table")
    return out


def _spend_section(m: dict[str, Any]) -> str:
    s = (m.get("metrics") or {}).get("spend")
    if not s:
        return ""
    if "model" not in s:
        return f"<h2>Spend per order</h2><p>No spend model: {_e(s.get('skipped', '?'))}.</p>"
    fit = s["model"]
    out = (
        "<h2>Spend per order</h2><p>Gamma-Gamma model on "
        f"{_f(fit.get('n_customers'))} repeat buyers: p {_f(fit.get('p'), 3)}, q "
        f"{_f(fit.get('q'), 3)}, gamma {_f(fit.get('gamma'), 3)}, log-likelihood "
        f"{_f(fit.get('log_likelihood'), 1)}. Correlation of repeat orders and order value "
        f"{_f(s.get('frequency_correlation'), 3)} (the model assumes none); "
        f"{_f(s.get('nonpositive_orders'))} repeat orders of value 0 or less left out.</p>"
    )
    if "rmse" in s:
        rows = [["encore", *(_f(s.get(c), 2) for c in SPEND_COLUMNS)]]
        for name, fig in (s.get("baselines") or {}).items():
            rows.append([_e(name), *(_f(fig.get(c), 2) for c in SPEND_COLUMNS)])
        out += (
            f"<p>Spend per customer over {_f(s.get('horizon_days'), 0)} days, "
            f"{_e(s.get('window'))} ({_f(s.get('customers'))} customers): expected purchases "
            "times expected order value, against naive rates.</p>"
            + _table(["estimator", *SPEND_COLUMNS], rows)
        )
    return out


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
        ["time range", f"{_e(str(d.get('time_min'))[:10])} .. {_e(str(d.get('time_max'))[:10])}"],
        ["trained as of", _e(as_of_date(m))],
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
    metrics = m.get("metrics") or {}
    serving = metrics.get("serving") or {}
    served = (
        f"<p><strong>Served list: {_e(serving.get('list') or 'als')}</strong>"
        + (f" ({_e(serving['reason'])})" if serving.get("reason") else "")
        + (
            f"; explore-only questions (purchases hidden): {_e(serving['explore'])}"
            if serving.get("explore")
            else ""
        )
        + ".</p>"
    )
    explore = metrics.get("ranking_explore") or {}
    out = (
        "<h2>Ranking against the baselines</h2>"
        f"<p>Held-out window {_e(str(w.get('start'))[:10])} .. {_e(as_of_date(w.get('end')))}; "
        "every model on the same customers.</p>"
        + served
        + _table(["model", *RANKING_COLUMNS], rows)
    )
    if explore:
        out += "<h3>Explore-only lists, judged on new items</h3>" + _table(
            ["list", *RANKING_COLUMNS],
            [[_e(n), *(_f(f.get(c)) for c in RANKING_COLUMNS)] for n, f in explore.items()],
        )
    training = metrics.get("ranker_training") or {}
    if training.get("importance"):
        gains = sorted(training["importance"].items(), key=lambda kv: -kv[1])
        out += (
            "<h3>What the ranker learned from</h3><p>Share of the gain of its trees, "
            f"from {_f(training.get('train_customers'))} customers' "
            f"{_f(training.get('train_rows'))} candidate rows: "
            + ", ".join(f"{_e(k)} {v:.0%}" for k, v in gains)
            + ".</p>"
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
        # the date rule of every surface, asked of the model alone,
        # without the value columns' lifetime sums over every customer
        days = likely_purchase_days(bundle.timing, np.arange(bundle.n_customers))
        png = _histogram_png(
            np.asarray(days, dtype=float),
            "Days until a purchase is more likely than not (none past 365)",
            "days",
        )
        out += "<h3>Predicted days to the next purchase</h3>" + _img(png, "histogram")
    return out


def _samples_section(bundle: Bundle, seed: int) -> str:
    if bundle.n_customers == 0:
        return ""
    answerer = Answerer(bundle, due_once=False)  # a few customers: their due items only
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
        f"<p>Trained {_e(m.get('created_at'))}, as of {_e(as_of_date(m))}; gate: "
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
        _spend_section(m),
        _health_section(bundle),
        _samples_section(bundle, seed),
        "</body></html>",
    ]
    return "\n".join(parts).encode("utf-8")
