"use strict";
// The marketers' console: one page, four views (customers, items, campaigns,
// model), each at its own address so a view can be shared as a link:
//   /customers/{id} (or /?customer={id}), /items/{id}, /campaigns?..., /model
// Everything shown comes from the JSON API under /v1; lists are paginated on
// the server, so the page never holds more than a page of customers.

const $ = id => document.getElementById(id);
const esc = s => String(s ?? "").replace(/[&<>"']/g,
  c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\"": "&quot;", "'": "&#39;"}[c]));
// whole percent rounded down, as the API's sentences (a figure under one half never reads 50%)
const pct = p => {
  if (p === null || p === undefined || Number.isNaN(p)) return "—";
  const v = 100 * p;
  if (v > 0 && v < 1) return "<1%";
  if (v > 99 && v < 100) return ">99%";
  return Math.floor(v + 1e-9) + "%";
};
const money = x => x === null || x === undefined ? "—" : x.toFixed(2);
const num = (x, d = 3) => x === null || x === undefined ? "—" : Number(x).toFixed(d);
const enc = encodeURIComponent;
const customerHref = id => "/customers/" + enc(id);
const itemHref = id => "/items/" + enc(id);

async function api(url) {
  let r;
  try { r = await fetch(url); } catch (e) { throw new Error("the server cannot be reached: " + e.message); }
  const body = await r.json().catch(() => ({detail: r.status + " " + r.statusText}));
  if (!r.ok) { const err = new Error(body.detail || r.statusText); err.status = r.status; throw err; }
  return body;
}

function say(text) {
  const m = $("message");
  m.textContent = text || "";
  m.hidden = !text;
}

function table(el, head, rows, numeric = []) {
  if (!rows.length) { el.innerHTML = `<tr><td class="muted">nothing to show</td></tr>`; return; }
  el.innerHTML = "<tr>" + head.map((h, i) => `<th${numeric.includes(i) ? ' class="num"' : ""}>${esc(h)}</th>`).join("") + "</tr>" +
    rows.map(r => "<tr>" + r.map((c, i) => {
      const cls = numeric.includes(i) ? ' class="num"' : "";
      return c && c.html !== undefined ? `<td${cls}>${c.html}</td>` : `<td${cls}>${esc(c)}</td>`;
    }).join("") + "</tr>").join("");
}
const link = (href, text) => ({html: `<a href="${esc(href)}" data-nav>${esc(text)}</a>`});

// -- the model, shown on every view ------------------------------------------------
let MODEL = null, CATEGORIES = [];
async function loadModel() {
  try {
    MODEL = await api("/v1/model");
  } catch (e) { $("model-line").textContent = e.message; return; }
  const m = MODEL, d = m.data || {};
  const trained = (m.created_at || "").replace("T", " ").slice(0, 16) + " UTC";
  const rank = (m.metrics || {}).ranking || {};
  const served = rank[servedList(m)];
  const pop = rank.popularity;
  let quality = "";
  if (served && pop) {
    quality = ` · nDCG@10 ${num(served["ndcg@10"])} vs popularity ${num(pop["ndcg@10"])}`;
  }
  $("model-line").innerHTML =
    `model <b id="model-version">${esc(m.version)}</b> · trained ${esc(trained)} · ` +
    `data as of <b>${esc(m.as_of)}</b> · ${(d.customers ?? 0).toLocaleString()} customers, ` +
    `${(d.items ?? 0).toLocaleString()} items${esc(quality)}` +
    (m.report_url ? ` · <a id="report-link" href="${esc(m.report_url)}">training report</a>` : "");
}

// the list the API serves (the manifest's metrics.serving.list; ALS before there was a choice)
const servedList = m => (((m.metrics || {}).serving || {}).list) || "als";

async function loadCategories() {
  if (CATEGORIES.length) return CATEGORIES;
  try { CATEGORIES = (await api("/v1/categories")).categories.map(c => c.name); }
  catch (e) { say(e.message); }
  return CATEGORIES;
}

function categoryBoxes(fieldset, name, onChange) {
  fieldset.querySelectorAll("label").forEach(l => l.remove());
  for (const c of CATEGORIES) {
    const l = document.createElement("label");
    l.innerHTML = `<input type="checkbox" name="${esc(name)}" value="${esc(c)}"> ${esc(c)}`;
    l.querySelector("input").addEventListener("change", onChange);
    fieldset.append(l);
  }
  fieldset.hidden = !CATEGORIES.length;
}
const checked = fieldset => [...fieldset.querySelectorAll("input:checked")].map(i => i.value);

// -- search with suggestions -----------------------------------------------------------
function suggest({input, list, button, note, url, row, open}) {
  let timer = null, seq = 0, shown = [], active = -1, offset = 0, query = "";
  const close = () => { list.hidden = true; active = -1; };
  async function fetchPage(q, more) {
    const mine = ++seq;
    if (!more) { offset = 0; shown = []; }
    let page;
    try { page = await api(url(q, offset)); }
    catch (e) { if (mine === seq) { note.textContent = e.message; close(); } return; }
    if (mine !== seq) return;  // a newer keystroke answered first
    query = q;
    shown = shown.concat(page.customers || page.items);
    offset = shown.length;
    note.textContent = page.total === 0 ? `nothing starts with “${q}”` :
      `${page.total.toLocaleString()} match${page.total === 1 ? "" : "es"}` +
      (page.total > shown.length ? `, showing the first ${shown.length}` : "");
    render(page.total);
  }
  function render(total) {
    list.innerHTML = shown.map((s, i) => `<li role="option" data-i="${i}"${i === active ? ' class="active"' : ""}>${row(s)}</li>`).join("") +
      (total > shown.length ? `<li class="more" data-more="1">more…</li>` : "");
    list.hidden = !shown.length;
  }
  input.addEventListener("input", () => {
    clearTimeout(timer);
    const q = input.value.trim();
    if (!q) { note.textContent = ""; close(); return; }
    timer = setTimeout(() => fetchPage(q, false), 120);
  });
  input.addEventListener("keydown", ev => {
    if (ev.key === "ArrowDown" || ev.key === "ArrowUp") {
      if (!shown.length) return;
      ev.preventDefault();
      active = (active + (ev.key === "ArrowDown" ? 1 : shown.length - 1)) % shown.length;
      render(Infinity);
    } else if (ev.key === "Enter") {
      ev.preventDefault();
      go();
    } else if (ev.key === "Escape") close();
  });
  list.addEventListener("mousedown", ev => {
    const li = ev.target.closest("li");
    if (!li) return;
    ev.preventDefault();
    if (li.dataset.more) { fetchPage(query, true); return; }
    active = Number(li.dataset.i);
    go();
  });
  input.addEventListener("blur", () => setTimeout(close, 150));
  button.addEventListener("click", go);
  function go() {
    const picked = active >= 0 ? shown[active] : null;
    const text = input.value.trim();
    close();
    if (picked) { open(picked.customer_id ?? picked.item_id); return; }
    if (!text) { say("Type at least one character of an id to search."); return; }
    open(text);
  }
}

// -- customers ----------------------------------------------------------------------------
let historyBefore = null, CUSTOMER = null;

async function showCustomer(id) {
  CUSTOMER = id;
  $("customer-search").value = id;
  const box = $("customer");
  box.hidden = true;
  say("");
  let line;
  try {
    line = await api(`/v1/customers/${enc(id)}/timeline?limit=12`);
  } catch (e) {
    say(e.status === 404 ? `No customer “${id}” in the served model: ${e.message}. ` +
        "Check the id, or search for it above." : e.message);
    document.title = "Encore — customer not found";
    return;
  }
  document.title = `Encore — customer ${id}`;
  box.hidden = false;
  $("customer-title").textContent = id;
  const seg = $("customer-segment");
  seg.textContent = line.segment || "no purchases";
  seg.className = "badge " + (line.segment || "").replace(" ", "-");
  $("customer-link").href = customerHref(id);
  $("customer-facts").textContent = line.purchase_days
    ? `${line.purchase_days} purchase day${line.purchase_days === 1 ? "" : "s"} from ${line.first_purchase} to ${line.last_purchase} · ${line.items_bought} different items · figures as of ${line.as_of}`
    : `no purchases in this version's log · figures as of ${line.as_of}`;
  historyBefore = null;
  renderHistory(line, false);
  await Promise.all([showTiming(id, line), showPicks(), showAgain(id)]);
}

function renderHistory(line, append) {
  const list = $("history");
  const items = line.orders.map(o => {
    const lines = o.items.map(i => i.item_id === "(left out)" ? esc("an item left out of the model") :
      `<a href="${esc(itemHref(i.item_id))}" data-nav>${esc(i.title || i.item_id)}</a>` +
      (i.quantity !== 1 ? ` ×${i.quantity}` : "") + (i.category ? ` <span class="muted">${esc(i.category)}</span>` : ""));
    return `<li><span class="day">${esc(o.date)}</span> <span class="muted small">${o.value === null ? "" : money(o.value)}</span>` +
      `<div class="lines">${lines.join("<br>")}</div></li>`;
  });
  if (append) list.insertAdjacentHTML("beforeend", items.join(""));
  else list.innerHTML = items.join("");
  const shown = list.children.length;
  $("history-older").hidden = !(line.orders.length && shown < line.purchase_days);
  historyBefore = line.orders.length ? line.orders[line.orders.length - 1].date : historyBefore;
  $("history-note").textContent = line.note || (line.purchase_days ? `${shown} of ${line.purchase_days} purchase days shown` : "");
}

$("history-older").addEventListener("click", async () => {
  try {
    renderHistory(await api(`/v1/customers/${enc(CUSTOMER)}/timeline?limit=12&before=${historyBefore}`), true);
  } catch (e) { say(e.message); }
});

const svgNS = "http://www.w3.org/2000/svg";
function svg(w, h, parts) {
  return `<svg xmlns="${svgNS}" viewBox="0 0 ${w} ${h}" role="img">${parts.join("")}</svg>`;
}

async function showTiming(id, line) {
  const plot = $("timing-plot"), words = $("timing-words"), value = $("timing-value");
  let next, c;
  try {
    [next, c] = await Promise.all([
      api(`/v1/customers/${enc(id)}/next-purchase?horizon_days=90`),
      api(`/v1/customers/${enc(id)}/purchase-curve?days=90`),
    ]);
  } catch (e) { plot.innerHTML = ""; words.innerHTML = `<li>${esc(e.message)}</li>`; value.textContent = ""; return; }
  words.innerHTML = next.summary.map(s => `<li>${esc(s)}</li>`).join("");
  value.textContent = next.expected_spend === null ? (next.value_note || "")
    : `expected spend in the next 90 days ${money(next.expected_spend)} (next order worth ${money(next.expected_order_value)}); ` +
      `lifetime value over ${next.clv_horizon_days} days ${money(next.clv)}`;
  // P(buy within t) for t = 1..90, with the 50% line (the date) and P(active), the curve's ceiling
  const W = 520, H = 230, L = 44, R = 12, T = 14, B = 34;
  const x = d => L + (d - 1) / 89 * (W - L - R), y = p => T + (1 - p) * (H - T - B);
  const pts = c.days.map((d, i) => `${x(d).toFixed(1)},${y(c.p_purchase[i]).toFixed(1)}`);
  const parts = [
    `<path class="area" d="M${x(1)},${y(0)} L${pts.join(" L")} L${x(90)},${y(0)} Z"/>`,
    `<line class="axis" x1="${L}" y1="${y(0)}" x2="${W - R}" y2="${y(0)}"/>`,
    `<line class="axis" x1="${L}" y1="${T}" x2="${L}" y2="${y(0)}"/>`,
    `<line class="half" x1="${L}" y1="${y(0.5)}" x2="${W - R}" y2="${y(0.5)}"/>`,
  ];
  for (const p of [0, 0.25, 0.5, 0.75, 1]) parts.push(`<text x="${L - 6}" y="${y(p) + 4}" text-anchor="end">${p * 100}%</text>`);
  for (const d of [1, 15, 30, 45, 60, 75, 90]) parts.push(`<text x="${x(d)}" y="${H - B + 16}" text-anchor="middle">${d}</text>`);
  parts.push(`<text x="${(L + W - R) / 2}" y="${H - 4}" text-anchor="middle">days after ${esc(c.as_of)}</text>`);
  if (c.p_active !== null) {
    parts.push(`<line class="ceiling" x1="${L}" y1="${y(c.p_active)}" x2="${W - R}" y2="${y(c.p_active)}"/>`);
    parts.push(`<text x="${W - R}" y="${y(c.p_active) - 4}" text-anchor="end">still a customer ${pct(c.p_active)}</text>`);
  }
  const med = next.median_days_to_next;
  if (med !== null && med <= 90) {
    parts.push(`<line class="date" x1="${x(med)}" y1="${T}" x2="${x(med)}" y2="${y(0)}"/>`);
    parts.push(`<text x="${x(med) + 4}" y="${T + 10}">${esc(next.next_purchase_date)}</text>`);
  }
  parts.push(`<polyline class="curve" points="${pts.join(" ")}"/>`);
  plot.innerHTML = svg(W, H, parts) +
    `<div class="muted small">chance of buying within t days (blue); dashed: one half${c.p_active === null ? "" : "; dotted: chance they are still a customer"}</div>`;
  plot.dataset.points = String(c.days.length);
  drawStrip(line, next);
}

// every purchase day on one line, from a year before the as-of day (or the first purchase)
// to 90 days after it, with the day a purchase becomes more likely than not
function drawStrip(line, next) {
  const el = $("history-strip");
  if (!line.purchase_dates.length) { el.innerHTML = ""; return; }
  const day = s => Date.parse(s + "T00:00:00Z") / 864e5;
  const asOf = day(line.as_of), start = Math.min(day(line.purchase_dates[0]), asOf - 365), end = asOf + 90;
  const W = 520, H = 74, L = 10, R = 10, Y = 34;
  const x = d => L + (d - start) / (end - start) * (W - L - R);
  const parts = [`<line class="axis" x1="${L}" y1="${Y}" x2="${W - R}" y2="${Y}"/>`,
    `<line class="axis" x1="${x(asOf)}" y1="${Y - 16}" x2="${x(asOf)}" y2="${Y + 16}"/>`,
    `<text x="${x(asOf)}" y="${Y + 30}" text-anchor="middle">as of ${esc(line.as_of)}</text>`];
  const first = new Date(start * 864e5), label = d => new Date(d).toISOString().slice(0, 7);
  parts.push(`<text x="${L}" y="${Y + 30}">${label(first)}</text>`);
  for (const d of line.purchase_dates) parts.push(`<circle class="dot" cx="${x(day(d)).toFixed(1)}" cy="${Y}" r="4"><title>${esc(d)}</title></circle>`);
  if (next && next.next_purchase_date && day(next.next_purchase_date) <= end) {
    const nx = x(day(next.next_purchase_date));
    parts.push(`<circle class="future" cx="${nx.toFixed(1)}" cy="${Y}" r="6"><title>likely by ${esc(next.next_purchase_date)}</title></circle>`);
    parts.push(`<text x="${nx + 9}" y="${Y - 10}" text-anchor="${nx > W - 150 ? "end" : "start"}">likely by ${esc(next.next_purchase_date)}</text>`);
  }
  el.innerHTML = svg(W, H, parts);
}

async function showPicks() {
  const id = CUSTOMER;
  const k = $("rule-k").value, purchases = $("rule-purchases").value;
  const cats = checked($("rule-categories"));
  // no exclude_purchased: the served list decides, as on the shop's pages
  const qs = new URLSearchParams({k});
  if (purchases) qs.set("exclude_purchased", purchases);
  cats.forEach(c => qs.append("category", c));
  try {
    const rec = await api(`/v1/customers/${enc(id)}/recommendations?${qs}`);
    if (id !== CUSTOMER) return;
    const shown = {"": "", "true": " · nothing they bought", "false": " · everything they bought may show"}[purchases];
    $("picks-note").textContent = `answered by: ${rec.strategy}` + (cats.length ? ` · only ${cats.join(", ")}` : "") + shown +
      ` · ${rec.items.length} pick${rec.items.length === 1 ? "" : "s"}`;
    table($("picks"), ["#", "item", "category", "score", "why"],
      rec.items.map(i => [i.rank, link(itemHref(i.item_id), i.title || i.item_id), i.category || "", num(i.score), i.reason]), [0, 3]);
  } catch (e) { $("picks-note").textContent = e.message; $("picks").innerHTML = ""; }
}
for (const el of ["rule-k", "rule-purchases"]) $(el).addEventListener("change", () => CUSTOMER && showPicks());
$("rule-k").addEventListener("input", () => CUSTOMER && showPicks());

async function showAgain(id) {
  try {
    const b = await api(`/v1/customers/${enc(id)}/buy-again?within_days=30&k=10`);
    const due = b.items.filter(i => i.probability >= 0.05);
    table($("again"), ["item", "category", "chance within 30 days", "every", "last bought", "why"],
      due.map(i => [link(itemHref(i.item_id), i.title || i.item_id), i.category || "", pct(i.probability),
                    i.cycle_days === null ? "—" : `${Math.round(i.cycle_days)} days`, `${Math.round(i.days_since_last)} days ago`, i.reason]), [2]);
  } catch (e) { table($("again"), ["note"], [[e.message]]); }
}

// -- items ---------------------------------------------------------------------------------
let ITEM = null, buyersOffset = 0;
async function showItem(id) {
  ITEM = id;
  $("item-search").value = id;
  $("item").hidden = true;
  say("");
  let info;
  try { info = await api(`/v1/items/${enc(id)}`); }
  catch (e) {
    say(e.status === 404 ? `No item “${id}” in the served model: ${e.message}.` : e.message);
    return;
  }
  document.title = `Encore — ${info.title || id}`;
  $("item").hidden = false;
  $("item-title").textContent = info.title || id;
  $("item-category").textContent = info.category || "no category";
  $("item-facts").textContent = `${info.item_id} · price ${money(info.price)}${info.available ? "" : " · not available"} · ` +
    `${info.buyers.toLocaleString()} buyers` +
    (info.repurchase_item ? ` · rebought about every ${Math.round(info.cycle_days)} days` : " · not a repurchase item");
  buyersOffset = 0;
  $("buyers").innerHTML = "";
  await Promise.all([
    api(`/v1/items/${enc(id)}/similar?k=8`).then(s => table($("similar"), ["item", "category", "similarity"],
      s.items.map(i => [link(itemHref(i.item_id), i.title || i.item_id), i.category || "", num(i.similarity)]), [2]))
      .catch(e => table($("similar"), ["note"], [[e.message]])),
    moreBuyers(),
    api(`/v1/items/${enc(id)}/likely-buyers?within_days=30&limit=10`).then(l => {
      $("rebuy-note").textContent = info.repurchase_item ? `${l.rebuy.total.toLocaleString()} past buyers, most likely to rebuy first`
        : "not a repurchase item: nobody is due to rebuy it";
      table($("rebuy"), ["customer", "chance within 30 days"], l.rebuy.customers.map(c => [link(customerHref(c.customer_id), c.customer_id), pct(c.figure)]), [1]);
      $("new-note").textContent = `${l.new.total.toLocaleString()} customers never bought it; highest model score first`;
      table($("newbuyers"), ["customer", "score"], l.new.customers.map(c => [link(customerHref(c.customer_id), c.customer_id), num(c.figure)]), [1]);
    }).catch(e => { $("rebuy-note").textContent = e.message; }),
  ]);
}

async function moreBuyers() {
  const id = ITEM;
  try {
    const b = await api(`/v1/items/${enc(id)}/buyers?offset=${buyersOffset}&limit=15`);
    const rows = b.customers.map(c => `<tr><td><a href="${esc(customerHref(c.customer_id))}" data-nav>${esc(c.customer_id)}</a></td>` +
      `<td class="num">${c.purchase_days ?? c.lines}</td><td>${esc(c.last_bought ?? "—")}</td></tr>`).join("");
    if (!buyersOffset) $("buyers").innerHTML = `<tr><th>customer</th><th class="num">days bought</th><th>last bought</th></tr>`;
    $("buyers").insertAdjacentHTML("beforeend", rows);
    buyersOffset += b.customers.length;
    $("buyers-note").textContent = `${b.total.toLocaleString()} customers bought it; most purchases first`;
    $("buyers-more").hidden = buyersOffset >= b.total;
  } catch (e) { $("buyers-note").textContent = e.message; }
}
$("buyers-more").addEventListener("click", moreBuyers);

// -- campaigns ------------------------------------------------------------------------------
let campaignTimer = null, campaignSeq = 0;
function campaignQuery() {
  const f = $("campaign");
  const qs = new URLSearchParams();
  qs.set("kind", f.querySelector("input[name=kind]:checked").value);
  qs.set("within_days", $("c-days").value);
  qs.set("min_probability", $("c-min").value);
  qs.set("max_probability", $("c-max").value);
  if ($("c-segment").value) qs.set("segment", $("c-segment").value);
  checked($("c-categories")).forEach(c => qs.append("category", c));
  qs.set("picks", $("c-picks").value);
  return qs;
}

async function showCampaign(push = true) {
  const qs = campaignQuery();
  if (push) history.replaceState(null, "", "/campaigns?" + qs);
  const mine = ++campaignSeq;
  const dl = $("c-download");
  try {
    const page = await api(`/v1/campaigns?${qs}&limit=20`);
    if (mine !== campaignSeq) return;
    say("");
    const seg = $("c-segment"), keep = seg.value;
    seg.innerHTML = `<option value="">any</option>` + Object.entries(page.segments)
      .map(([s, n]) => `<option value="${esc(s)}">${esc(s)} (${n.toLocaleString()})</option>`).join("");
    seg.value = keep;
    $("c-count").textContent = `${page.count.toLocaleString()} customer${page.count === 1 ? "" : "s"} match`;
    dl.href = `/v1/campaigns/download?${qs}`;
    dl.classList.toggle("disabled", page.count === 0);
    dl.textContent = page.count > 100000 ? "Download CSV (first 100,000)" : `Download CSV (${page.count.toLocaleString()} rows)`;
    $("c-note").textContent = `figures as of ${page.as_of}; at risk: once regular, with a falling chance of being a customer over the last ${page.lookback_days} days`;
    $("c-due").href = `/v1/customers/due?within_days=${enc($("c-days").value)}&min_probability=${enc($("c-min").value)}&format=csv`;
    const picks = Number($("c-picks").value);
    table($("c-preview"), ["customer", "segment", `chance within ${page.within_days} days`, "still a customer", `${page.lookback_days} days ago`, "last bought", "likely by", ...(picks ? ["picks"] : [])],
      page.customers.map(c => [link(customerHref(c.customer_id), c.customer_id), c.segment, pct(c.p_purchase), pct(c.p_active),
        pct(c.p_active_before), c.last_purchase, c.next_purchase_date || "—",
        ...(picks ? [{html: c.picks.map(p => `<a href="${esc(itemHref(p.item_id))}" data-nav>${esc(p.title || p.item_id)}</a>`).join("<br>")}] : [])]), [2, 3, 4]);
  } catch (e) {
    if (mine !== campaignSeq) return;
    say(e.message);
    $("c-count").textContent = "—";
    dl.classList.add("disabled");
    $("c-preview").innerHTML = "";
  }
}
// the CSV is fetched, then saved: a list the server cannot write in time is a message, not a broken file
$("c-download").addEventListener("click", async ev => {
  ev.preventDefault();
  const a = ev.currentTarget;
  if (a.classList.contains("disabled") || a.dataset.busy) return;
  const label = a.textContent;
  a.dataset.busy = "1";
  a.textContent = "Writing the CSV…";
  try {
    const r = await fetch(a.href);
    if (!r.ok) {
      const body = await r.json().catch(() => ({detail: r.status + " " + r.statusText}));
      throw new Error(body.detail);
    }
    const blob = await r.blob();
    const name = (/filename="([^"]+)"/.exec(r.headers.get("content-disposition") || "") || [])[1] || "campaign.csv";
    const url = URL.createObjectURL(blob);
    const save = document.createElement("a");
    save.href = url;
    save.download = name;
    document.body.append(save);
    save.click();
    save.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  } catch (e) {
    say("The CSV was not written: " + e.message);
  } finally {
    a.textContent = label;
    delete a.dataset.busy;
  }
});
$("campaign").addEventListener("input", () => { clearTimeout(campaignTimer); campaignTimer = setTimeout(showCampaign, 250); });
$("campaign").addEventListener("submit", ev => ev.preventDefault());

function campaignFromAddress() {
  const qs = new URLSearchParams(location.search);
  if (qs.get("kind")) for (const r of document.querySelectorAll("#campaign input[name=kind]")) r.checked = r.value === qs.get("kind");
  for (const [name, el] of [["within_days", "c-days"], ["min_probability", "c-min"], ["max_probability", "c-max"], ["picks", "c-picks"]]) {
    if (qs.get(name) !== null) $(el).value = qs.get(name);
  }
  if (qs.get("segment")) $("c-segment").innerHTML = `<option value="${esc(qs.get("segment"))}" selected>${esc(qs.get("segment"))}</option>`;
  const cats = qs.getAll("category");
  $("c-categories").querySelectorAll("input").forEach(i => { i.checked = cats.includes(i.value); });
}

// -- model ------------------------------------------------------------------------------------
async function showModel() {
  if (!MODEL) await loadModel();
  const m = MODEL;
  if (!m) return;
  const g = m.gate || {};
  const d = m.data || {};
  $("model-facts").innerHTML = `<div class="facts">` +
    [["version", m.version], ["trained", (m.created_at || "").replace("T", " ").slice(0, 19) + " UTC"], ["data as of", m.as_of + " (the last day of the log)"],
     ["log", `${(d.rows ?? 0).toLocaleString()} rows, ${(d.customers ?? 0).toLocaleString()} customers, ${(d.items ?? 0).toLocaleString()} items`],
     ["promotion gate", g.verdict || g.status || (g.passed === undefined ? "—" : (g.passed ? "passed" : "held back"))]]
      .map(([k, v]) => `<div class="muted">${esc(k)}</div><div>${esc(v)}</div>`).join("") +
    (m.report_url ? `<div class="muted">report</div><div><a href="${esc(m.report_url)}">the training report of this version</a></div>` : "") + `</div>`;
  const met = m.metrics || {};
  const w = met.ranking_window || {};
  $("model-ranking-note").textContent = w.customers ? `${w.customers} customers who bought in the held-out weeks from ${String(w.start).slice(0, 10)}; every model judged on them` : "";
  const rank = met.ranking || {};
  table($("model-ranking"), ["model", "nDCG@10", "recall@20", "coverage@10"],
    Object.entries(rank).map(([k, v]) => [k === servedList(m) ? `${k} (served)` : k, num(v["ndcg@10"]), num(v["recall@20"]), num(v["coverage@10"])]), [1, 2, 3]);
  const t = met.timing;
  if (t) {
    const rows = [["encore (" + t.model + ")", t], ...Object.entries(t.baselines || {})];
    table($("model-timing"), ["estimator", "RMSE", "Brier", "AUC", "total predicted", "actual"],
      rows.map(([k, v]) => [k, num(v.rmse), num(v.brier), num(v.auc), num(v.total_predicted, 0), num(v.total_actual, 0)]), [1, 2, 3, 4, 5]);
  } else table($("model-timing"), ["note"], [["no next-purchase model in this version"]]);
  api("/v1/shop/metrics").then(h => {
    const share = x => x === null || x === undefined ? "—" : pct(x);
    table($("model-health"), ["month", "active customers", "repurchase rate", "orders per customer",
      "average order value", "revenue", "from returning customers"],
      h.months.slice(-6).map(r => [r.month, r.active_customers.toLocaleString(), share(r.repurchase_rate),
        money(r.orders_per_customer), money(r.average_order_value), money(r.revenue), share(r.returning_revenue_share)]), [1, 2, 3, 4, 5, 6]);
    $("model-health-note").textContent = (h.notes || []).join("; ");
  }).catch(e => { $("model-health-note").textContent = e.message; $("model-health").innerHTML = ""; });
  const b = met.buy_again;
  if (b) {
    table($("model-again"), ["list", "recall@10", "nDCG@10"],
      ["buy_again", "buy_again_due_only", "personal_frequency"].filter(k => b[k]).map(k => [k, num(b[k]["recall@10"]), num(b[k]["ndcg@10"])]), [1, 2]);
  } else table($("model-again"), ["note"], [["no buy-again model in this version"]]);
}

// -- views and addresses ------------------------------------------------------------------------
const VIEWS = ["customers", "items", "campaigns", "model"];
function showView(name) {
  for (const v of VIEWS) {
    $("view-" + v).hidden = v !== name;
    $("nav-" + v).classList.toggle("active", v === name);
  }
}

async function route() {
  say("");
  const path = decodeURIComponent(location.pathname);
  const qs = new URLSearchParams(location.search);
  if (path.startsWith("/items")) {
    showView("items");
    const id = path.replace(/^\/items\/?/, "");
    if (id) await showItem(id); else { $("item").hidden = true; document.title = "Encore — items"; }
  } else if (path.startsWith("/campaigns")) {
    showView("campaigns");
    document.title = "Encore — campaign list";
    await loadCategories();
    if (!$("c-categories").querySelector("input")) categoryBoxes($("c-categories"), "category", () => showCampaign());
    campaignFromAddress();
    await showCampaign(false);
  } else if (path.startsWith("/model")) {
    showView("model");
    document.title = "Encore — model";
    await showModel();
  } else {
    showView("customers");
    const id = path.startsWith("/customers/") ? path.slice("/customers/".length) : qs.get("customer");
    if (id) await showCustomer(id);
    else { $("customer").hidden = true; document.title = "Encore — customers"; }
  }
}

function navigate(href) {
  history.pushState(null, "", href);
  route();
}
document.addEventListener("click", ev => {
  const a = ev.target.closest("a[data-nav]");
  if (!a || ev.ctrlKey || ev.metaKey || ev.shiftKey || ev.button !== 0) return;
  ev.preventDefault();
  navigate(a.getAttribute("href"));
});
window.addEventListener("popstate", route);

suggest({
  input: $("customer-search"), list: $("customer-suggestions"), button: $("customer-go"), note: $("customer-search-note"),
  url: (q, offset) => `/v1/customers?q=${enc(q)}&offset=${offset}&limit=10`,
  row: c => `<span>${esc(c.customer_id)}</span><span class="muted">${c.purchase_days} day${c.purchase_days === 1 ? "" : "s"}${c.last_purchase ? ", last " + esc(c.last_purchase) : ""}</span>`,
  open: id => navigate(customerHref(id)),
});
suggest({
  input: $("item-search"), list: $("item-suggestions"), button: $("item-go"), note: $("item-search-note"),
  url: (q, offset) => `/v1/items?q=${enc(q)}&offset=${offset}&limit=10`,
  row: i => `<span>${esc(i.title || i.item_id)}</span><span class="muted">${esc(i.category || "")} · ${esc(i.item_id)}</span>`,
  open: id => navigate(itemHref(id)),
});

loadModel();
loadCategories().then(() => categoryBoxes($("rule-categories"), "rule-category", () => CUSTOMER && showPicks()));
route();
