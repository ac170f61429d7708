// tokenforge console: plain JavaScript over the user API, no build step.
// The API key lives in sessionStorage only and travels as `Authorization: Bearer`;
// it is never put in a URL, a log or the page. Every text from the API is inserted
// as text (never as HTML). Words come from the API (labels, symbols, status texts).
"use strict";

const KEY_SLOT = "tokenforge.apiKey";
const state = { buckets: {}, models: [], features: { keys: false, csv: null }, poll: null, ledgerCursor: "" };

// ---------- small helpers ----------

// Same rule as tokenforge.money.format_amount: up to 6 decimals, trailing zeros trimmed.
function fmt(micros, bucket) {
  const symbol = (state.buckets[bucket] || {}).symbol || "";
  const sign = micros < 0 ? "-" : "";
  const abs = Math.abs(micros);
  const whole = Math.floor(abs / 1e6);
  const frac = String(abs % 1e6).padStart(6, "0").replace(/0+$/, "");
  return `${sign}${whole}${frac ? "." + frac : ""} ${symbol}`.trim();
}

function label(bucket) { return (state.buckets[bucket] || {}).label || bucket; }

function facts(pairs) {
  return pairs.filter((p) => p).map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]).flat();
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

function apiKey() { return sessionStorage.getItem(KEY_SLOT) || ""; }

async function api(method, path, body, accept) {
  const headers = { authorization: `Bearer ${apiKey()}`, accept: accept || "application/json" };
  if (body !== undefined) headers["content-type"] = "application/json";
  const res = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (accept && accept !== "application/json") return res;
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
  if (!res.ok) {
    if (res.status === 401 && path !== "/v1/wallet") signOut("Your API key was refused; sign in again.");
    throw new ApiError(res.status, (data && data.error && data.error.message) || `HTTP ${res.status}`);
  }
  return data;
}

function flash(message) {
  const el = $("#flash");
  el.textContent = message || "";
  el.hidden = !message;
}

async function guarded(work) {
  try { flash(""); await work(); } catch (error) { flash(error.message); }
}

// ---------- sign in / out and navigation ----------

async function signIn(key) {
  sessionStorage.setItem(KEY_SLOT, key);
  try {
    await loadBuckets();
  } catch (error) {
    sessionStorage.removeItem(KEY_SLOT);
    throw error;
  }
  await detectFeatures();
}

function signOut(message) {
  sessionStorage.removeItem(KEY_SLOT);
  stopPolling();
  $("#nav").hidden = true;
  $("#sign-out").hidden = true;
  if (location.hash && location.hash !== "#/signin") location.hash = "#/signin";
  route();
  if (message) { const e = $("#signin-error"); e.textContent = message; e.hidden = false; }
}

async function loadBuckets() {
  const [wallet] = await Promise.all([api("GET", "/v1/wallet"), loadWords()]);
  state.buckets = {};
  for (const b of wallet.balances) state.buckets[b.bucket] = b;
  return wallet;
}

// Pages appear only when their API is there: no dead buttons.
async function detectFeatures() {
  try {
    await api("GET", "/v1/keys");
    state.features.keys = true;
  } catch (error) {
    state.features.keys = error.status !== 404 && error.status !== 405;
  }
  $('nav a[data-page="keys"]').hidden = !state.features.keys;
}

const PAGES = {
  wallet: showWallet, topup: showTopup, models: showModels,
  playground: showPlayground, usage: showUsage, keys: showKeys, research: showResearch,
};

function route() {
  const [, page, ...rest] = (location.hash || "#/wallet").split("/");
  const signedIn = Boolean(apiKey());
  const name = !signedIn ? "signin" : PAGES[page] && (page !== "keys" || state.features.keys) ? page : "wallet";
  for (const section of document.querySelectorAll(".page")) section.hidden = section.id !== `page-${name}`;
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.page === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  $("#nav").hidden = !signedIn;
  $("#sign-out").hidden = !signedIn;
  flash("");
  if (name !== "topup") stopPolling();
  if (signedIn) guarded(() => PAGES[name](rest.map(decodeURIComponent)));
  else $("#signin-key").focus();
}

// ---------- Wallet ----------

// The glossary's words (GET /console/vocabulary.json, from tokenforge/vocabulary.py);
// a row's own `kind_text` first.
const WORDS = { amounts: {}, receipt_states: {}, topup_states: {}, entry_kinds: {} };
async function loadWords() {
  if (!Object.keys(WORDS.amounts).length) Object.assign(WORDS, await api("GET", "/console/vocabulary.json"));
}
function word(table, code) { return (WORDS[table] || {})[code] || code; }

function bucketCard(b) {
  return h("section", { class: `card bucket ${b.bucket}`, "aria-labelledby": `bucket-${b.bucket}`, "data-bucket": b.bucket },
    h("h2", { id: `bucket-${b.bucket}` }, b.label, " ", h("span", { class: "symbol" }, `(${b.symbol})`)),
    h("p", { class: "hint" }, `Pays for ${b.pays_for}.`),
    h("p", { class: "available", "data-testid": `available-${b.bucket}` }, b.available.display),
    h("p", { class: "hint" }, "available to spend"),
    h("dl", { class: "facts" }, facts([
      [word("amounts", "posted"), h("span", { "data-testid": `posted-${b.bucket}` }, b.posted.display)],
      [word("amounts", "held_for_requests"), h("span", { "data-testid": `held-for-requests-${b.bucket}` }, (b.held_for_requests || b.held).display)],
      [word("amounts", "set_aside"), h("span", { "data-testid": `set-aside-${b.bucket}` }, (b.set_aside || { display: fmt(0, b.bucket) }).display)],
      [word("amounts", "available"), b.available.display],
    ])));
}

function topupItem(t) {
  const id = encodeURIComponent(t.order_id);
  return h("li", { "data-order": t.order_id, class: `topup ${t.state}` },
    h("div", {}, h("strong", {}, t.bucket_label), ` · ${t.topup_amount.display} via ${t.provider}`),
    h("div", { class: `state ${t.state}`, "data-state": t.state }, t.state_text),
    h("div", { class: "hint" }, `${word("amounts", "received_balance")}: ${t.received_balance.display} · ${when(t.created_at)}`),
    h("div", { class: "links" },
      t.state === "pending" ? h("a", { href: `#/topup/${id}`, "data-testid": "continue-order" }, "Continue paying") : null,
      t.state === "credited" ? h("a", { href: `#/wallet/order/${id}` }, "Ledger row") : null,
      t.state === "credited" ? [" · ", h("a", { href: `#/topup/uses/${id}`, "data-testid": "topup-uses-link" }, "What it paid for")] : null));
}

// The balance of every bucket after each row; rows come newest first, and a bucket
// with no row nearby is read from its neighbours or from today's balance.
function runningBalances(rows) {
  const after = rows.map(() => ({}));
  for (const bucket of Object.keys(state.buckets)) {
    let known = state.buckets[bucket].posted.micros;
    for (let i = 0; i < rows.length; i += 1) {
      if (rows[i].bucket === bucket) known = rows[i].balance_after.micros;
      after[i][bucket] = known;
      if (rows[i].bucket === bucket) known = rows[i].balance_after.micros - rows[i].change.micros;
    }
  }
  return after;
}

// The ledger page that holds the row asked for: the newest 50, else the rows of its
// request or order, else older pages until it shows up (a link opens any row).
async function ledgerWith(focus, id, cursor) {
  const newest = await api("GET", `/v1/wallet/ledger?limit=50${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`);
  const has = (page) => page.data.some((e) => (focus === "entry" && e.entry_id === id)
    || (focus === "order" && e.order_id === id) || (focus === "request" && e.request_id === id));
  if (!focus || has(newest)) return { page: newest, filtered: false };
  if (focus === "order" || focus === "request") {
    const param = focus === "order" ? "order_id" : "request_id";
    return { page: await api("GET", `/v1/wallet/ledger?${param}=${encodeURIComponent(id)}`), filtered: true };
  }
  let page = newest;
  for (let i = 0; i < 50 && page.next_cursor; i += 1) {
    page = await api("GET", `/v1/wallet/ledger?limit=200&cursor=${encodeURIComponent(page.next_cursor)}`);
    if (has(page)) return { page, filtered: true };
  }
  return { page: newest, filtered: false };
}

async function showWallet([focus, id]) {
  if (focus) state.ledgerCursor = "";
  const [wallet, topups, found] = await Promise.all([
    loadBuckets(), api("GET", "/v1/topups?limit=5"), ledgerWith(focus, id, state.ledgerCursor),
  ]);
  const ledger = found.page;
  $("#ledger-more").hidden = !ledger.next_cursor || found.filtered;
  $("#ledger-more").dataset.cursor = ledger.next_cursor || "";
  $("#ledger-newest").hidden = !(found.filtered || state.ledgerCursor);
  fill($("#buckets"), wallet.balances.map(bucketCard));
  fill($("#latest-topups"), topups.data.length ? topups.data.map(topupItem) : h("li", { class: "hint" }, "No top-ups yet."));
  $("#ledger-after-credit").textContent = `${label("credit")} after`;
  $("#ledger-after-routed").textContent = `${label("routed")} after`;
  // A page that is not the newest shows each row's own balance after it only.
  const after = found.filtered || state.ledgerCursor
    ? ledger.data.map((e) => ({ [e.bucket]: e.balance_after.micros }))
    : runningBalances(ledger.data);
  const rows = ledger.data.map((e, i) => {
    const match = (focus === "entry" && e.entry_id === id) || (focus === "order" && e.order_id === id)
      || (focus === "request" && e.request_id === id);
    let detail = null;
    // A run closed before per-request rows existed has one row naming the run.
    if (e.request_id && e.request_id.startsWith("run_")) detail = h("span", {}, `Run ${e.request_id}`);
    else if (e.request_id) detail = h("a", { href: `#/usage/${encodeURIComponent(e.request_id)}` }, "Receipt");
    else if (e.order_id) detail = h("span", {}, `Top-up order ${e.order_id}`);
    else if (e.reason) detail = h("span", {}, e.reason);
    return h("tr", { id: `entry-${e.entry_id}`, "data-entry": e.entry_id, class: match ? "highlight" : null },
      h("td", {}, when(e.created_at)),
      h("td", {}, e.kind_text || word("entry_kinds", e.kind)),
      h("td", {}, label(e.bucket)),
      h("td", { class: `num ${e.change.micros < 0 ? "neg" : "pos"}` }, e.change.display),
      h("td", { class: "num" }, after[i].credit === undefined ? "" : fmt(after[i].credit, "credit")),
      h("td", { class: "num" }, after[i].routed === undefined ? "" : fmt(after[i].routed, "routed")),
      h("td", {}, detail));
  });
  fill($("#ledger tbody"), rows.length ? rows : h("tr", {}, h("td", { colspan: 7 }, "No ledger rows yet.")));
  const target = document.querySelector("#ledger tr.highlight");
  if (target) { target.setAttribute("tabindex", "-1"); target.scrollIntoView({ block: "center" }); target.focus(); }
}

// ---------- Top up ----------

function stopPolling() { if (state.poll) { clearTimeout(state.poll); state.poll = null; } }

async function showTopup([first, second]) {
  showTopupForm();  // first: the form works before the lists below arrive
  await loadTopups(false);
  $("#topup-uses").hidden = first !== "uses";
  if (first === "uses" && second) await showUses(second, "");
  else if (first) await followOrder(first);
}

// Every top-up, newest first, ten at a time.
async function loadTopups(more) {
  const cursor = more ? $("#topups-more").dataset.cursor : "";
  const page = await api("GET", `/v1/topups?limit=10${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`);
  const list = $("#all-topups");
  if (!more) fill(list);
  list.append(...(page.data.length || more ? page.data.map(topupItem) : [h("li", { class: "hint" }, "No top-ups yet.")]));
  $("#topups-more").hidden = !page.next_cursor;
  $("#topups-more").dataset.cursor = page.next_cursor || "";
}

// What a credited top-up paid for: received, used, left, and each request with its receipt.
async function showUses(orderId, cursor) {
  const page = await api("GET", `/v1/topups/${encodeURIComponent(orderId)}/uses?limit=20${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`);
  const panel = $("#topup-uses");
  panel.hidden = false;
  const rows = page.data.map((u) => h("tr", { "data-request": u.request_id || "" },
    h("td", {}, when(u.created_at)),
    h("td", {}, word("entry_kinds", u.kind)),
    h("td", {}, u.request_id ? h("a", { href: `#/usage/${encodeURIComponent(u.request_id)}` }, u.request_id) : u.entry_id),
    h("td", { class: "num" }, u.used.display)));
  fill(panel,
    h("h2", {}, `What top-up ${orderId} paid for`),
    h("dl", { class: "facts" }, facts([
      [word("amounts", "received_balance"), page.received_balance.display],
      [word("amounts", "used"), h("span", { "data-testid": "uses-used" }, page.used.display)],
      [word("amounts", "left"), h("span", { "data-testid": "uses-left" }, page.left.display)],
      ["Requests and rows it paid", String(page.total)],
    ])),
    h("p", { class: "hint" }, "Charges are paid by top-ups first in, first out: the oldest top-up with something left pays first."),
    rows.length ? h("table", { "data-testid": "uses-table" },
      h("thead", {}, h("tr", {}, ["When", "What", "Request (receipt)", word("amounts", "used")].map((x) => h("th", { scope: "col" }, x)))),
      h("tbody", {}, rows)) : h("p", { class: "hint" }, "Nothing paid from it yet."),
    page.next_cursor ? h("button", { type: "button", class: "quiet", onclick: () => guarded(() => showUses(orderId, page.next_cursor)) }, "Next page") : null);
}

function showTopupForm() {
  if (!$("#topup-buckets").childElementCount) {
    fill($("#topup-buckets"), Object.values(state.buckets).map((b, i) =>
      h("label", { class: "choice" },
        h("input", { type: "radio", name: "bucket", value: b.bucket, checked: i === 0 }),
        h("span", {}, h("strong", {}, `${b.label} (${b.symbol})`), ` pays for ${b.pays_for}`))));
  }
}

const SANDBOX = [["pay", "Pay (sandbox)"], ["fail", "Fail the payment (sandbox)"], ["expire", "Let it expire (sandbox)"]];
const OPEN_STATES = new Set(["pending", "awaiting_review"]);

function renderOrder(order, credited) {
  const panel = $("#topup-order");
  panel.hidden = false;
  // A poll that finds nothing new leaves the panel (and what is typed in it) alone.
  const signature = JSON.stringify([order, credited && credited.entry_id, Object.keys(state.buckets).length]);
  if (panel.dataset.signature === signature) return;
  panel.dataset.signature = signature;
  const typed = $("#transfer-reference");
  const kept = typed ? { value: typed.value, focused: document.activeElement === typed } : null;
  const open = OPEN_STATES.has(order.status);
  const bucket = state.buckets[order.bucket];
  fill(panel,
    h("h2", {}, `Top-up order ${order.order_id}`),
    h("p", { class: `state ${order.state}`, "data-testid": "order-state", "data-state": order.state }, order.state_text),
    h("dl", { class: "facts" }, facts([
      ["Top-up amount", order.topup_amount.display],
      ["Received balance", `${order.received_balance.display} to ${order.bucket_label}`],
      ["Payment provider", order.provider],
      open && order.status === "pending" ? ["Pay before", when(order.expires_at)] : null,
      credited ? ["Ledger row", h("a", { href: `#/wallet/order/${encodeURIComponent(order.order_id)}` }, `${credited.change.display}, ${order.bucket_label} after: ${credited.balance_after.display}`)] : null,
      bucket ? [`${bucket.label} available now`, h("span", { "data-testid": "order-bucket-available" }, bucket.available.display)] : null,
    ])),
    open && order.provider === "sandbox" && order.status === "pending"
      ? h("div", { class: "actions" }, SANDBOX.map(([outcome, text]) =>
        h("button", { type: "button", class: outcome === "pay" ? null : "quiet", onclick: () => guarded(() => sandbox(order, outcome)) }, text)))
      : null,
    order.checkout_url && open ? h("a", { class: "button", href: order.checkout_url, rel: "noopener" }, "Pay with the provider") : null,
    order.provider === "manual_transfer" && order.status === "pending" ? transferForm(order) : null,
    order.status === "pending"
      ? h("button", { type: "button", class: "quiet", onclick: () => guarded(() => cancelOrder(order)) }, "Cancel order")
      : null);
  const again = $("#transfer-reference");
  if (again && kept) {
    again.value = kept.value;
    if (kept.focused) again.focus();
  }
}

function transferForm(order) {
  return h("form", { class: "narrow", onsubmit: (event) => {
    event.preventDefault();
    guarded(async () => {
      await api("POST", `/v1/topups/${encodeURIComponent(order.order_id)}/proof`, {
        transfer_reference: event.target.reference.value.trim(),
      });
      await followOrder(order.order_id);
    });
  } },
  h("label", { for: "transfer-reference" }, "Your bank transfer's reference"),
  h("input", { id: "transfer-reference", name: "reference", required: true, autocomplete: "off" }),
  h("button", { type: "submit" }, "I have sent the transfer"));
}

async function cancelOrder(order) {
  await api("POST", `/v1/topups/${encodeURIComponent(order.order_id)}/cancel`, {});
  await followOrder(order.order_id);
}

async function followOrder(orderId) {
  stopPolling();
  const order = await api("GET", `/v1/topups/${encodeURIComponent(orderId)}`);
  let credited = null;
  if (order.state === "credited") {
    const rows = await api("GET", `/v1/wallet/ledger?order_id=${encodeURIComponent(orderId)}`);
    credited = rows.data[0] || null;
    if (credited) await loadBuckets();
  }
  renderOrder(order, credited);
  const done = !OPEN_STATES.has(order.state) && order.state !== "paid";
  if (done && !$("#page-topup").hidden) await loadTopups(false);
  if (!done && !$("#page-topup").hidden) {
    // A bank transfer waits for a person: look again now and then, not every moment.
    const pause = order.status === "awaiting_review" ? 5000 : 700;
    state.poll = setTimeout(() => guarded(() => followOrder(orderId)), pause);
  }
}

async function sandbox(order, outcome) {
  await api("POST", `/v1/topups/${encodeURIComponent(order.order_id)}/sandbox`, { outcome });
  await followOrder(order.order_id);
}

async function createTopup(event) {
  event.preventDefault();
  const form = event.target;
  const bucket = (form.querySelector('input[name="bucket"]:checked') || {}).value;
  const order = await api("POST", "/v1/topups", {
    bucket, provider: form.provider.value, amount: form.amount.value.trim(), currency: "USD",
  });
  renderOrder(order, null);
  await followOrder(order.order_id);
}

// ---------- Models ----------

async function loadModels() {
  if (!state.models.length) state.models = (await api("GET", "/v1/models")).data;
  return state.models;
}

function priceLine(prices) {
  return `${prices.input_per_million.display} / 1M input tokens · ${prices.output_per_million.display} / 1M output tokens`;
}

async function showModels() {
  const models = await loadModels();
  fill($("#models"), models.map((m) => h("article", { class: "card", "aria-labelledby": `model-${m.id}` },
    h("h2", { id: `model-${m.id}` }, m.display_name || m.id),
    h("p", { class: "hint" }, h("code", {}, m.id), ` · context ${m.context_length} tokens`,
      m.max_output_tokens ? ` · up to ${m.max_output_tokens} output tokens` : ""),
    m.routes.map((r) => h("div", { class: "route" },
      h("span", { class: `tag ${r.kind}` }, r.kind), " paid from ", h("strong", {}, r.bucket_label),
      h("dl", { class: "facts" }, facts([
        ["Use it as", h("code", {}, `${m.id}@${r.kind}`)],
        ["Upstream model", r.upstream_model],
        ["Input", `${r.prices.input_per_million.display} / 1M tokens`],
        ["Output", `${r.prices.output_per_million.display} / 1M tokens`],
        r.prices.request_fee.micros ? ["Per request", r.prices.request_fee.display] : null,
        ["Channels", `${r.channels.length} (primary ${r.channels[0] || "none"})`],
      ])),
      (r.health || []).length ? healthTable(r) : null)))));
}

// Each channel's circuit as a person reads it (routing's view, as /v1/models answers).
const CIRCUIT_WORDS = { closed: "Healthy", half_open: "Trying again", open: "Failing: skipped for now" };

function healthTable(route) {
  return h("table", { class: "health", "data-testid": `health-${route.kind}` },
    h("caption", { class: "sr-only" }, `Channel health of the ${route.kind} route`),
    h("thead", {}, h("tr", {}, ["Channel", "State", "Recent errors", "Latency p50 / p95", "Last failure"].map((x) => h("th", { scope: "col" }, x)))),
    h("tbody", {}, route.health.map((c) => h("tr", { "data-channel": c.channel },
      h("td", {}, c.channel),
      h("td", { class: `circuit ${c.state}` }, CIRCUIT_WORDS[c.state] || c.state),
      h("td", {}, `${(c.error_rate * 100).toFixed(1)} %`),
      h("td", {}, c.latency_p95_ms ? `${c.latency_p50_ms} / ${c.latency_p95_ms} ms` : "no calls yet"),
      h("td", {}, c.last_failure || "none")))));
}

// ---------- Playground ----------

let previewTimer = null;

// The charge policy in the glossary's words.
const FAILURE_POLICY = {
  none: "nothing is charged",
  prompt_only: "only the prompt is charged",
  as_reported: "charged as the provider reports",
};

async function showPlayground() {
  const models = (await loadModels()).filter((m) => m.max_output_tokens > 0);
  const select = $("#chat-model");
  if (!select.childElementCount) {
    fill(select, models.map((m) => h("option", { value: m.id }, m.display_name ? `${m.display_name} (${m.id})` : m.id)));
    fillRoutes();
  }
  schedulePreview();
}

function fillRoutes(modelSelect = "#chat-model", routeSelect = "#chat-route") {
  const model = state.models.find((m) => m.id === $(modelSelect).value);
  fill($(routeSelect),
    h("option", { value: "" }, "The API key's preference"),
    (model ? model.routes : []).map((r) => h("option", { value: r.kind }, `${r.kind}: paid from ${r.bucket_label}`)));
}

function chatBody(stream) {
  const route = $("#chat-route").value;
  const body = {
    model: route ? `${$("#chat-model").value}@${route}` : $("#chat-model").value,
    messages: [{ role: "user", content: $("#chat-prompt").value }],
    max_tokens: Number($("#chat-max").value) || 64,
  };
  if (stream) { body.stream = true; body.stream_options = { include_usage: true }; }
  return body;
}

function schedulePreview() {
  clearTimeout(previewTimer);
  previewTimer = setTimeout(() => guarded(preview), 250);
}

async function preview() {
  const dl = $("#chat-preview");
  let p;
  try {
    p = await api("POST", "/v1/routes/preview", chatBody(false));
  } catch (error) {
    fill(dl, facts([["Cannot run", error.message]]));
    return;
  }
  fill(dl, facts([
    ["Model", p.selected_model],
    ["Route", h("span", { "data-testid": "preview-route" }, p.route)],
    ["Upstream model", p.upstream_model],
    ["Paid from", h("span", { "data-testid": "preview-bucket" }, p.bucket_label)],
    ["Prices", p.prices.text || `${p.prices.input_per_million.display} / 1M input, ${p.prices.output_per_million.display} / 1M output`],
    ["Worst case", h("span", { "data-testid": "preview-worst" }, `${p.worst_case.display} (for ${p.max_output_tokens} output tokens)`)],
    ["Available", p.available.display],
    ["Channels", [p.channels.primary, ...p.channels.backups].filter(Boolean).join(", then ")],
    ["If the request fails", FAILURE_POLICY[p.if_the_request_fails] || p.if_the_request_fails],
    ["Can run", p.can_run ? "yes" : `no: top up ${p.bucket_label}`],
  ]));
}

async function sendChat(event) {
  event.preventDefault();
  const button = $("#chat-send");
  const answer = $("#chat-answer");
  const status = $("#chat-status");
  button.disabled = true;
  fill(answer);
  fill($("#chat-receipt"), h("p", { class: "hint" }, "Waiting for the answer to end…"));
  status.textContent = "Sending…";
  try {
    const res = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { authorization: `Bearer ${apiKey()}`, "content-type": "application/json", accept: "text/event-stream" },
      body: JSON.stringify(chatBody(true)),
    });
    if (!res.ok) {
      const data = await res.json().catch(() => null);
      throw new ApiError(res.status, (data && data.error && data.error.message) || `HTTP ${res.status}`);
    }
    status.textContent = `Streaming from the ${res.headers.get("x-tokenforge-route") || ""} route…`;
    const { summary, notice } = await readEvents(res, (text) => answer.append(document.createTextNode(text)));
    status.textContent = notice || "Done.";
    if (summary) await showChatReceipt(summary);
  } catch (error) {
    status.textContent = "";
    fill($("#chat-receipt"), h("p", { class: "error", role: "alert" }, error.message));
  } finally {
    button.disabled = false;
    loadBuckets().then(schedulePreview).catch(() => {});
  }
}

// An answer streamed as server-sent events: `onText` gets each piece of text; the
// end gives the usage (with its cost), the receipt summary, and any notice.
async function readEvents(res, onText) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  const result = { text: "", usage: null, summary: null, notice: null };
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) result.notice = chunk.error.message;
        for (const choice of chunk.choices || []) {
          const text = (choice.delta || {}).content;
          if (text) { result.text += text; onText(text); }
        }
        if (chunk.usage) result.usage = chunk.usage;
        if (chunk.receipt) result.summary = chunk.receipt;
      }
    }
  }
  return result;
}

async function showChatReceipt(summary) {
  const full = await api("GET", `/v1/usage/${encodeURIComponent(summary.request_id)}`);
  fill($("#chat-receipt"), receiptView(full, summary));
}

const ROUTE_OUTCOME = {
  fell_back: "every channel failed before the first byte, its hold returned",
  insufficient_balance: "balance too low for its worst case, not tried",
  hold_in_doubt: "the wallet did not answer its hold, not tried; the hold, if placed, returned",
  final: "paid",
};

function receiptView(r, summary, paidFrom) {
  const attempts = r.attempts.map((a) => `${a.channel}: ${a.outcome} (${a.latency_ms} ms)`).join("; ");
  return h("div", { "data-request": r.request_id },
    h("p", { class: "state" }, r.status_text),
    h("dl", { class: "facts" }, facts([
      ["Request", h("code", {}, r.request_id)],
      ["Model", r.selected_model],
      ["Route", r.route],
      ["Upstream model", r.upstream_model],
      ["Paid from", h("span", { "data-testid": "receipt-bucket" }, r.bucket_label)],
      ["Fallback used", r.fallback_used ? "yes" : "no"],
      ...((r.route_attempts || []).length ? [["Routes tried", h("span", { "data-testid": "receipt-routes" },
        r.route_attempts.map((a) => `${a.route} (${a.bucket_label}): ${ROUTE_OUTCOME[a.outcome] || a.outcome}`).join("; "))]] : []),
      ["Attempts", attempts || "none"],
      ["Tokens", `${r.tokens.prompt} input${r.tokens.cached ? ` (${r.tokens.cached} cached)` : ""} · ${r.tokens.completion} output${r.tokens.reported_by_upstream ? "" : " (counted by us)"}`],
      ["Prices", priceLine(r.prices)],
      [word("amounts", "charge"), h("strong", { "data-testid": "receipt-charge" }, r.charge.display)],
      ["Settlement rule", (r.settlement_rule || (summary && summary.settlement_rule) || "n/a").replace(/_/g, " ")],
      ["Ledger row", r.ledger_entry_id
        ? h("a", { href: `#/wallet/entry/${encodeURIComponent(r.ledger_entry_id)}`, "data-testid": "receipt-ledger-link" }, `Ledger row ${r.ledger_entry_id}`)
        : "none (nothing charged)"],
      (paidFrom || []).length ? ["Paid from top-ups", h("span", { "data-testid": "receipt-paid-from" },
        paidFrom.map((p, i) => [i ? "; " : "", p.order_id
          ? h("a", { href: `#/topup/uses/${encodeURIComponent(p.order_id)}` }, `top-up ${p.order_id}`)
          : `ledger row ${p.credit_entry_id}`, `: ${p.used.display}`]))] : null,
      ["Trace", r.trace_id || "n/a"],
    ])));
}

// ---------- Usage ----------

async function showUsage([requestId]) {
  const detail = $("#receipt-detail");
  if (requestId) {
    const id = encodeURIComponent(requestId);
    const [r, paid] = await Promise.all([api("GET", `/v1/usage/${id}`), api("GET", `/v1/usage/${id}/paid-from`)]);
    detail.hidden = false;
    fill(detail, h("h2", {}, "Receipt"), receiptView(r, null, paid.data));
  } else {
    detail.hidden = true;
  }
  const models = await loadModels();
  const modelSelect = $("#usage-model");
  if (modelSelect.childElementCount <= 1) {
    modelSelect.append(...models.flatMap((m) => [h("option", { value: m.id }, m.id), ...m.routes.map((r) => h("option", { value: `${m.id}@${r.kind}` }, `${m.id}@${r.kind}`))]));
    $("#usage-bucket").append(...Object.values(state.buckets).map((b) => h("option", { value: b.bucket }, b.label)));
  }
  await loadReceipts();
  detectCsv();
}

// Model, balance, status and days are filtered by the API (so the CSV matches);
// the route by the page.
function usageQuery() {
  const params = new URLSearchParams({ limit: "200" });
  const pick = { model: "#usage-model", bucket: "#usage-bucket", status: "#usage-status" };
  for (const [name, id] of Object.entries(pick)) if ($(id).value) params.set(name, $(id).value);
  const day = (value, plus) => {
    const d = new Date(`${value}T00:00:00`);
    d.setDate(d.getDate() + plus);
    return d.toISOString();
  };
  if ($("#usage-from").value) params.set("from", day($("#usage-from").value, 0));
  if ($("#usage-to").value) params.set("to", day($("#usage-to").value, 1));
  return `/v1/usage?${params}`;
}

async function loadReceipts() {
  const page = await api("GET", usageQuery());
  const routeKind = $("#usage-route").value;
  const receipts = page.data.filter((r) => !routeKind || r.route === routeKind);
  fill($("#receipts tbody"), receipts.length ? receipts.map((r) => h("tr", { "data-request": r.request_id },
    h("td", {}, when(r.started_at)),
    h("td", {}, r.selected_model),
    h("td", {}, r.route),
    h("td", {}, r.bucket_label),
    h("td", { class: "num" }, `${r.tokens.prompt} / ${r.tokens.completion}`),
    h("td", { class: "num" }, r.charge.display),
    h("td", {}, r.status_text),
    h("td", {}, h("a", { href: `#/usage/${encodeURIComponent(r.request_id)}` }, "Receipt"))))
    : h("tr", {}, h("td", { colspan: 8 }, "No receipts match.")));
  drawCharts(receipts);
}

function groupDaily(receipts, keyOf, valueOf) {
  const sums = new Map();
  for (const r of receipts) {
    const day = (r.started_at || "").slice(0, 10);
    const key = `${day} · ${keyOf(r)}`;
    const entry = sums.get(key) || { day, key, group: keyOf(r), value: 0, bucket: r.bucket };
    entry.value += valueOf(r);
    sums.set(key, entry);
  }
  return [...sums.values()].sort((a, b) => (a.key < b.key ? 1 : -1)).slice(0, 14);
}

function barChart(title, rows, show, barClass) {
  const rowH = 34;
  const width = 360;
  const max = Math.max(1, ...rows.map((r) => r.value));
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${Math.max(rowH, rows.length * rowH)}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `${title}: ${rows.map((r) => `${r.key} ${show(r)}`).join("; ") || "no data"}`);
  rows.forEach((r, i) => {
    const y = i * rowH;
    const make = (tag, attrs, text) => {
      const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
      for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
      if (text) el.textContent = text;
      svg.append(el);
    };
    make("text", { x: 0, y: y + 12 }, r.key);
    const w = Math.max(1, ((width - 120) * r.value) / max);
    make("rect", { x: 0, y: y + 16, width: w, height: 12, class: barClass(r) });
    make("text", { x: w + 4, y: y + 27 }, show(r));
  });
  return h("figure", { class: "card" }, h("figcaption", {}, h("strong", {}, title)), rows.length ? svg : h("p", { class: "hint" }, "No requests yet."));
}

function drawCharts(receipts) {
  const tokens = (r) => r.tokens.prompt + r.tokens.completion;
  const charts = [];
  for (const bucket of Object.keys(state.buckets)) {
    const mine = receipts.filter((r) => r.bucket === bucket);
    charts.push(barChart(`Charges per day, ${label(bucket)}`,
      groupDaily(mine, (r) => r.selected_model, (r) => r.charge.micros), (r) => fmt(r.value, bucket), () => `bar-${bucket}`));
  }
  charts.push(barChart("Tokens per day, per model", groupDaily(receipts, (r) => r.selected_model, tokens), (r) => `${r.value} tokens`, () => "bar"));
  charts.push(barChart("Tokens per day, per balance", groupDaily(receipts, (r) => r.bucket_label, tokens), (r) => `${r.value} tokens`, (r) => `bar-${r.bucket}`));
  fill($("#usage-charts"), charts);
}

// CSV export shows only when the API answers text/csv.
async function detectCsv() {
  if (state.features.csv === null) {
    try {
      const res = await api("GET", "/v1/usage?limit=1", undefined, "text/csv");
      state.features.csv = res.ok && (res.headers.get("content-type") || "").startsWith("text/csv");
    } catch (_) { state.features.csv = false; }
  }
  $("#usage-csv").hidden = !state.features.csv;
}

async function exportCsv() {
  const res = await api("GET", usageQuery(), undefined, "text/csv");
  if (!res.ok) throw new ApiError(res.status, `CSV export failed (HTTP ${res.status}).`);
  const url = URL.createObjectURL(await res.blob());
  const link = h("a", { href: url, download: "tokenforge-usage.csv" });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 5000);
}

// ---------- Research ----------

// The research assistant of `tokenforge research`, in the browser: the plan comes from
// the gateway (apps/research/plan.py, so both write the same sections with the
// same requests); the page opens the run, writes each section on it, closes it.
const research = { plan: null, preview: null, budget: 0, busy: false };

// Micro-units as the API's decimal string ("0.004800"), never through a float.
function decimal(micros) { return `${Math.floor(micros / 1e6)}.${String(micros % 1e6).padStart(6, "0")}`; }

async function showResearch() {
  const models = (await loadModels()).filter((m) => m.max_output_tokens > 0);
  const select = $("#research-model");
  if (!select.childElementCount) {
    fill(select, models.map((m) => h("option", { value: m.id }, m.display_name ? `${m.display_name} (${m.id})` : m.id)));
    fillRoutes("#research-model", "#research-route");
  }
}

function researchBusy(busy) {
  research.busy = busy;
  $("#research-plan-button").disabled = busy;
  const start = $("#research-start");
  if (start) start.disabled = busy || research.budget > research.preview.available.micros;
}

async function planResearch(event) {
  event.preventDefault();
  if (research.busy) return;
  const route = $("#research-route").value;
  const model = route ? `${$("#research-model").value}@${route}` : $("#research-model").value;
  const params = new URLSearchParams({
    topic: $("#research-topic").value, model,
    sections: $("#research-sections").value, max_tokens: $("#research-max").value,
  });
  const plan = await api("GET", `/console/research/plan?${params}`);
  const preview = await api("POST", "/v1/routes/preview", plan.preview_request);
  // The run's estimate, as the CLI sizes it: every section at its worst case.
  const budget = preview.worst_case.micros * plan.sections.length;
  Object.assign(research, { plan, preview, budget });
  for (const id of ["#research-progress", "#research-receipt", "#research-report"]) $(id).hidden = true;
  const enough = preview.available.micros >= budget;
  const panel = $("#research-plan");
  panel.hidden = false;
  fill(panel,
    h("h2", { id: "research-plan-title" }, `Plan: ${plan.topic}`),
    h("h3", {}, "Sections"),
    h("ol", { "data-testid": "research-sections" }, plan.sections.map((s) => h("li", {}, s.title))),
    h("dl", { class: "facts" }, facts([
      ["Model", `${preview.selected_model} → upstream ${preview.upstream_model}`],
      ["Route", h("span", { "data-testid": "research-route" }, preview.route)],
      ["Paid from", h("span", { "data-testid": "research-bucket" }, preview.bucket_label)],
      ["Prices", preview.prices.text],
      ["Worst case per section", h("span", { "data-testid": "research-worst" }, `${preview.worst_case.display} (for ${preview.max_output_tokens} output tokens)`)],
      ["Run estimate (held while it runs)", h("span", { "data-testid": "research-estimate" }, `${fmt(budget, preview.bucket)} for ${plan.sections.length} sections`)],
      ["Available", h("span", { "data-testid": "research-available" }, preview.available.display)],
      ["Can run", enough ? "yes" : `no: top up ${preview.bucket_label}`],
    ])),
    h("p", { class: "hint" }, "Starting holds the estimate. Only what the sections use is charged, "
      + "in one ledger row when the report ends; the rest of the hold is returned."),
    h("div", { class: "actions" },
      h("button", { type: "button", id: "research-start", disabled: !enough, onclick: () => guarded(startResearch) }, "Start the report"),
      h("button", { type: "button", class: "quiet", onclick: () => { panel.hidden = true; $("#research-topic").focus(); } }, "Change the plan")));
  $("#research-plan-title").setAttribute("tabindex", "-1");
  $("#research-plan-title").focus();
}

async function streamSection(request, runId, onText) {
  const res = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: {
      authorization: `Bearer ${apiKey()}`, "content-type": "application/json",
      accept: "text/event-stream", "x-tokenforge-run": runId,
    },
    body: JSON.stringify({ ...request, stream: true, stream_options: { include_usage: true } }),
  });
  if (!res.ok) {
    const data = await res.json().catch(() => null);
    throw new ApiError(res.status, (data && data.error && data.error.message) || `HTTP ${res.status}`);
  }
  return readEvents(res, onText);
}

function reportSkeleton(plan) {
  const article = $("#research-report");
  article.hidden = false;
  const bodies = plan.sections.map((s) => h("div", { class: "answer", "data-section-text": s.index }));
  fill(article,
    h("h2", { id: "research-report-title" }, `Report: ${plan.topic}`),
    h("p", { class: "notice-line" }, h("em", {}, plan.disclaimer)),
    plan.sections.flatMap((s, i) => [h("h3", {}, `${s.index}. ${s.title}`), bodies[i]]),
    h("hr"),
    h("p", { class: "notice-line", "data-testid": "research-report-disclaimer" }, plan.disclaimer));
  return bodies;
}

async function startResearch() {
  const { plan, budget } = research;
  if (!plan || research.busy) return;
  researchBusy(true);
  const progress = $("#research-progress");
  const status = h("p", { role: "status", "data-testid": "research-status" }, "Opening the run…");
  const marks = plan.sections.map((s) => h("span", { class: "state", "data-testid": `section-${s.index}` }, "waiting"));
  fill(progress, h("h2", { id: "research-progress-title" }, "Progress"), status,
    h("ol", { class: "progress" }, plan.sections.map((s, i) => h("li", {}, h("strong", {}, s.title), " · ", marks[i]))));
  progress.hidden = false;
  $("#research-receipt").hidden = true;
  const bodies = reportSkeleton(plan);
  let run = null;
  let stopped = null;
  try {
    run = await api("POST", "/v1/runs", { model: plan.model, budget: decimal(budget), ttl: 900 });
    status.textContent = `Run ${run.id} open: ${run.hold.amount.display} held from ${run.bucket_label} `
      + `(available before: ${run.available_before.display}).`;
    for (const [i, section] of plan.sections.entries()) {
      marks[i].className = "state pending";
      marks[i].textContent = "writing…";
      const answer = await streamSection(section.request, run.id, (text) => bodies[i].append(document.createTextNode(text)));
      const usage = answer.usage || {};
      marks[i].className = `state ${answer.notice ? "partial" : "succeeded"}`;
      marks[i].textContent = `${answer.notice ? "stopped early" : "done"}: ${usage.completion_tokens ?? 0} tokens, `
        + `${usage.cost ?? "0"} ${usage.cost_currency || ""}`.trim();
      status.textContent = `${i + 1} of ${plan.sections.length} sections written on run ${run.id}.`;
    }
  } catch (error) {
    stopped = error;
    for (const mark of marks) if (mark.textContent === "waiting" || mark.textContent === "writing…") {
      mark.className = "state failed";
      mark.textContent = "not written";
    }
  }
  try {
    if (run) {
      status.textContent += " Closing the run…";
      const receipt = await api("POST", `/v1/runs/${encodeURIComponent(run.id)}/close`, {});
      showResearchReceipt(receipt, plan);
      status.textContent = stopped
        ? `Stopped: ${stopped.message} The run is closed; only what was written is charged.`
        : `Done: ${plan.sections.length} sections written, run closed.`;
    } else if (stopped) {
      status.textContent = `Not started: ${stopped.message}`;
    }
  } finally {
    researchBusy(false);
    loadBuckets().catch(() => {});
  }
  if (stopped) throw stopped;
}

const LINE_STATUS = { succeeded: "Succeeded", partial: "Stopped early", failed: "Failed", rejected: "Not run" };

function showResearchReceipt(r, plan) {
  const panel = $("#research-receipt");
  panel.hidden = false;
  const bucket = r.run.bucket;
  const returned = r.run.budget.micros - r.totals.charge.micros;
  fill(panel,
    h("h2", { id: "research-receipt-title" }, "Receipt of the report"),
    h("dl", { class: "facts" }, facts([
      ["Run", h("code", { "data-testid": "research-run" }, r.run.id)],
      ["State", r.run.status],
      ["Paid from", r.run.bucket_label],
      ["Held for the report", r.run.budget.display],
      ["Requests", String(r.totals.requests)],
      ["Tokens", `${r.totals.prompt_tokens} input${r.totals.cached_tokens ? ` (${r.totals.cached_tokens} cached)` : ""} · ${r.totals.completion_tokens} output`],
      ["Time", `${(r.totals.duration_ms / 1000).toFixed(1)} s`],
      ["Charged", h("strong", { "data-testid": "research-charge" }, r.totals.charge.display)],
      ["Returned to the balance", fmt(Math.max(returned, 0), bucket)],
      ["Ledger rows", r.ledger_entry_id
        ? h("a", { href: `#/wallet/entry/${encodeURIComponent(r.ledger_entry_id)}`, "data-testid": "research-ledger-link" }, `Ledger row ${r.ledger_entry_id}`)
        : h("span", { "data-testid": "research-ledger-rows" }, r.lines.some((line) => line.ledger_entry_id)
          ? "one per request (each line links to its row)" : "none (nothing charged)")],
    ])),
    h("div", { class: "scroll", role: "region", "aria-label": "Requests of the report", tabindex: "0" },
      h("table", { "data-testid": "research-lines" },
        h("thead", {}, h("tr", {},
          h("th", { scope: "col" }, "Section"), h("th", { scope: "col" }, "Request"), h("th", { scope: "col" }, "Model"),
          h("th", { scope: "col" }, "Status"), h("th", { scope: "col", class: "num" }, "Tokens in / out"),
          h("th", { scope: "col", class: "num" }, "Charge"), h("th", { scope: "col" }, "Ledger row"))),
        h("tbody", {}, r.lines.map((line, i) => h("tr", { "data-request": line.request_id },
          h("td", {}, plan && plan.sections[i] ? plan.sections[i].title : ""),
          h("td", {}, h("a", { href: `#/usage/${encodeURIComponent(line.request_id)}` }, line.request_id)),
          h("td", {}, line.model),
          h("td", {}, LINE_STATUS[line.status] || line.status),
          h("td", { class: "num" }, `${line.prompt_tokens} / ${line.completion_tokens}`),
          h("td", { class: "num" }, line.charge.display),
          h("td", {}, line.ledger_entry_id
            ? h("a", { href: `#/wallet/entry/${encodeURIComponent(line.ledger_entry_id)}`, "data-testid": "research-line-ledger-link" }, "Ledger row")
            : "none")))),
        h("tfoot", {},
          r.models.map((m) => h("tr", {},
            h("th", { scope: "row", colspan: 4 }, `${m.model}: ${m.requests} requests`),
            h("td", { class: "num" }, `${m.prompt_tokens} / ${m.completion_tokens}`),
            h("td", { class: "num" }, m.charge.display), h("td", {}))),
          h("tr", {},
            h("th", { scope: "row", colspan: 4 }, "Total"),
            h("td", { class: "num" }, `${r.totals.prompt_tokens} / ${r.totals.completion_tokens}`),
            h("td", { class: "num", "data-testid": "research-total" }, r.totals.charge.display), h("td", {}))))),
    h("p", { class: "notice-line" }, plan ? plan.disclaimer : ""));
}

// ---------- Keys ----------

function keyList(data) { return (data && (data.data || data.keys)) || []; }

async function showKeys() {
  const keys = keyList(await api("GET", "/v1/keys"));
  fill($("#keys tbody"), keys.length ? keys.map((k) => {
    const id = k.id;
    const revoked = Boolean(k.revoked || k.revoked_at || k.status === "revoked");
    const limits = Object.entries(k.limits || {}).filter(([, v]) => v)
      .map(([name, v]) => `${name.replace(/_/g, " ")}: ${v}`);
    for (const cap of k.spend_caps || []) {
      if (cap.daily_micros) limits.push(`${label(cap.bucket)} per day: ${fmt(cap.daily_micros, cap.bucket)}`);
      if (cap.total_micros) limits.push(`${label(cap.bucket)} in total: ${fmt(cap.total_micros, cap.bucket)}`);
    }
    if ((k.allowed_models || []).length) limits.push(`models: ${k.allowed_models.join(", ")}`);
    if ((k.allowed_route_kinds || []).length) limits.push(`routes: ${k.allowed_route_kinds.join(", ")}`);
    if ((k.ip_allowlist || []).length) limits.push(`only from: ${k.ip_allowlist.join(", ")}`);
    if (k.expires_at) limits.push(`expires ${when(k.expires_at)}`);
    const limitText = limits.join("; ");
    return h("tr", { "data-key": id },
      h("td", {}, k.name || ""),
      h("td", {}, h("code", {}, k.prefix ? `${k.prefix}…` : id)),
      h("td", {}, (k.scopes || []).join(", ")),
      h("td", {}, limitText || "no limits"),
      h("td", {}, k.last_used_at ? when(k.last_used_at) : "never"),
      h("td", { class: `state ${revoked ? "failed" : "succeeded"}` }, revoked ? "Revoked: refused from now on" : "Active"),
      h("td", {}, revoked ? null : h("button", {
        type: "button", class: "danger", "aria-label": `Revoke ${k.name || id}`,
        onclick: () => guarded(() => revokeKey(id, k.name || id)),
      }, "Revoke")));
  }) : h("tr", {}, h("td", { colspan: 7 }, "No keys.")));
}

async function createKey(event) {
  event.preventDefault();
  const scopes = [...document.querySelectorAll('#key-form input[name="scope"]:checked')].map((c) => c.value);
  if (!scopes.length) throw new Error("Choose at least one thing the key may do.");
  const form = $("#key-form");
  const list = (text) => text.split(",").map((x) => x.trim()).filter(Boolean);
  const body = { name: $("#key-name").value.trim(), scopes };
  const models = list(form.models.value);
  if (models.length) body.allowed_models = models;
  const kinds = [...form.querySelectorAll('input[name="route_kind"]:checked')].map((c) => c.value);
  if (kinds.length) body.allowed_route_kinds = kinds;
  const ips = list(form.ips.value);
  if (ips.length) body.ip_allowlist = ips;
  const caps = [];
  for (const bucket of ["credit", "routed"]) {
    const daily = microsOf(form[`cap_${bucket}`].value);
    const total = microsOf(form[`total_${bucket}`].value);
    if (daily || total) caps.push({ bucket, ...(daily ? { daily_micros: daily } : {}), ...(total ? { total_micros: total } : {}) });
  }
  if (caps.length) body.spend_caps = caps;
  if (form.expires.value) body.expires_at = new Date(form.expires.value).toISOString();
  const created = await api("POST", "/v1/keys", body);
  const secret = created.key || "";
  const box = $("#key-created");
  box.hidden = false;
  fill(box, h("p", {}, h("strong", {}, "Copy this key now: it is shown only once.")),
    h("label", { for: "key-secret" }, "New API key"),
    h("input", { id: "key-secret", readonly: true, value: secret, "data-testid": "new-key" }));
  await showKeys();
  $("#key-secret").select();
}

// "2.5" -> 2500000 micro-units, exactly (no float touches money); "" -> 0.
function microsOf(text) {
  const value = text.trim();
  if (!value) return 0;
  const match = /^(\d+)(?:\.(\d{1,6}))?$/.exec(value);
  if (!match) throw new Error(`"${value}" is not an amount: write a decimal like 5 or 2.5 (at most 6 decimals).`);
  return Number(match[1]) * 1e6 + Number((match[2] || "").padEnd(6, "0"));
}

async function revokeKey(id, name) {
  if (!window.confirm(`Revoke ${name}? Requests with it are refused from now on.`)) return;
  await api("POST", `/v1/keys/${encodeURIComponent(id)}/revoke`, {});
  await showKeys();
}

// ---------- wiring ----------

document.addEventListener("DOMContentLoaded", () => {
  $("#signin-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const error = $("#signin-error");
    error.hidden = true;
    const key = $("#signin-key").value.trim();
    signIn(key).then(() => {
      $("#signin-key").value = "";
      location.hash = "#/wallet";
      route();
      $("#main").focus();
    }).catch((e) => {
      error.textContent = e.status === 401 || e.status === 403
        ? `This key cannot sign in: ${e.message}` : e.message;
      error.hidden = false;
    });
  });
  $("#sign-out").addEventListener("click", () => signOut(""));
  $("#ledger-more").addEventListener("click", (event) => guarded(async () => {
    state.ledgerCursor = event.target.dataset.cursor;
    await showWallet([]);
  }));
  $("#ledger-newest").addEventListener("click", (event) => {
    state.ledgerCursor = "";
    if (location.hash === "#/wallet") { event.preventDefault(); guarded(() => showWallet([])); }
  });
  $("#topups-more").addEventListener("click", () => guarded(() => loadTopups(true)));
  $("#topup-form").addEventListener("submit", (event) => guarded(() => createTopup(event)));
  $("#chat-form").addEventListener("submit", sendChat);
  $("#chat-model").addEventListener("change", () => { fillRoutes(); schedulePreview(); });
  for (const id of ["#chat-route", "#chat-max", "#chat-prompt"]) $(id).addEventListener("input", schedulePreview);
  $("#usage-filters").addEventListener("submit", (event) => { event.preventDefault(); guarded(loadReceipts); });
  $("#usage-csv").addEventListener("click", () => guarded(exportCsv));
  $("#key-form").addEventListener("submit", (event) => guarded(() => createKey(event)));
  $("#research-form").addEventListener("submit", (event) => guarded(() => planResearch(event)));
  $("#research-model").addEventListener("change", () => fillRoutes("#research-model", "#research-route"));
  window.addEventListener("hashchange", route);
  if (apiKey()) {
    Promise.all([loadBuckets(), detectFeatures()]).then(route).catch(() => signOut("Sign in again."));
  } else {
    route();
  }
});
