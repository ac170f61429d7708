// tokenforge operator console: plain JavaScript over /v1/operator (no build step).
// The operator credential and name live in sessionStorage only and travel as
// `Authorization: Bearer` and `X-Tokenforge-Operator`; every action asks for a reason,
// and the gateway writes it to the audit log under the operator's name.
"use strict";

const SLOT = "tokenforge.operator";

function session() {
  try { return JSON.parse(sessionStorage.getItem(SLOT) || "null"); } catch (_) { return null; }
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body) {
  const who = session() || {};
  const headers = {
    authorization: `Bearer ${who.token || ""}`,
    "x-tokenforge-operator": who.name || "",
    accept: "application/json",
  };
  if (body !== undefined) headers["content-type"] = "application/json";
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
  if (!res.ok) {
    if (res.status === 401 && path !== "/v1/operator/session") signOut("The operator credential was refused; sign in again.");
    throw new ApiError(res.status, (data && data.error && data.error.message) || `HTTP ${res.status}`);
  }
  return data;
}

function flash(message, ok) {
  const el = $("#flash");
  el.textContent = message || "";
  el.className = ok ? "alert ok" : "alert";
  el.hidden = !message;
}

async function guarded(work) {
  try { flash(""); await work(); } catch (error) { flash(error.message); }
}

function table(headings, rows, empty) {
  if (!rows.length) return h("p", { class: "hint" }, empty);
  return h("div", { class: "scroll", tabindex: 0 },
    h("table", {}, h("thead", {}, h("tr", {}, headings.map((x) => h("th", { scope: "col" }, x)))),
      h("tbody", {}, rows)));
}

// A form that asks for a reason before doing `act(reason)`.
function reasonForm(id, label, act, extra) {
  return h("form", { class: "inline-form", "data-testid": id, onsubmit: (event) => {
    event.preventDefault();
    const reason = event.target.reason.value.trim();
    guarded(() => act(reason, event.target));
  } },
  extra || null,
  h("label", { for: `${id}-reason` }, "Reason"),
  h("input", { id: `${id}-reason`, name: "reason", required: true, autocomplete: "off" }),
  h("button", { type: "submit" }, label));
}

// ---------- sign in ----------

async function signIn(name, token) {
  sessionStorage.setItem(SLOT, JSON.stringify({ name, token }));
  try {
    await api("GET", "/v1/operator/session");
  } catch (error) {
    sessionStorage.removeItem(SLOT);
    throw error;
  }
}

function signOut(message) {
  sessionStorage.removeItem(SLOT);
  if (location.hash && location.hash !== "#/signin") location.hash = "#/signin";
  route();
  if (message) { const e = $("#signin-error"); e.textContent = message; e.hidden = false; }
}

const PAGES = {
  reviews: showReviews, accounts: showAccounts, catalog: showCatalog, health: showHealth,
  reconcile: showReconcile, finishes: showFinishes, audit: showAudit,
};

function route() {
  const [, page, ...rest] = (location.hash || "#/reviews").split("/");
  const who = session();
  const name = !who ? "signin" : PAGES[page] ? page : "reviews";
  for (const section of document.querySelectorAll(".page")) section.hidden = section.id !== `page-${name}`;
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.page === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  $("#nav").hidden = !who;
  $("#sign-out").hidden = !who;
  $("#who").hidden = !who;
  $("#who").textContent = who ? `Signed in as ${who.name}` : "";
  flash("");
  if (who) guarded(() => PAGES[name](rest.map(decodeURIComponent)));
  else $("#signin-name").focus();
}

// ---------- reviews ----------

function orderFacts(t) {
  return [
    h("strong", {}, `${t.topup_amount.display} → ${t.received_balance.display} to ${t.bucket_label}`),
    h("div", { class: `state ${t.state}`, "data-state": t.state }, t.state_text),
    h("div", { class: "hint" }, `Order ${t.order_id} · account `,
      h("a", { href: `#/accounts/${encodeURIComponent(t.account_id)}` }, t.account_id),
      ` · ${t.provider}${t.transfer_reference ? ` · reference ${t.transfer_reference}` : ""} · opened ${when(t.created_at)}`),
  ];
}

async function showReviews() {
  const queue = await api("GET", "/v1/operator/reviews?limit=100");
  const items = queue.data.map((t) => h("li", { class: "card", "data-order": t.order_id },
    orderFacts(t),
    h("div", { class: "actions" },
      reasonForm(`approve-${t.order_id}`, "Approve", (reason) => review(t, "approve", reason)),
      reasonForm(`reject-${t.order_id}`, "Reject", (reason) => review(t, "reject", reason)))));
  fill($("#reviews"), items.length ? h("ul", { class: "plain" }, items) : h("p", { class: "hint" }, "Nothing waits for review."));
}

async function review(order, decision, reason) {
  const done = await api("POST", `/v1/operator/topups/${encodeURIComponent(order.order_id)}/review`, { decision, reason });
  await showReviews();
  flash(`${decision === "approve" ? "Approved" : "Rejected"} order ${done.order_id}: ${done.state_text}`, true);
}

// ---------- accounts ----------

async function showAccounts([id]) {
  if (!id) { fill($("#account")); $("#account-id").focus(); return; }
  $("#account-id").value = id;
  const a = await api("GET", `/v1/operator/accounts/${encodeURIComponent(id)}`);
  const balances = a.balances.map((b) => h("section", { class: `card bucket ${b.bucket}`, "data-bucket": b.bucket },
    h("h3", {}, `${b.label} (${b.symbol})`),
    h("dl", { class: "facts" },
      [["Balance", b.posted.display], ["Held", b.held.display],
      ["Held for requests in progress", b.held_for_requests.display], ["Set aside for fast serving", b.set_aside.display],
      ["Available to spend", b.available.display]].map(([k, v]) => [h("dt", {}, k), h("dd", { "data-testid": `${b.bucket}-${k}` }, v)]).flat())));
  const ledger = a.ledger.map((e) => h("tr", { "data-entry": e.entry_id },
    h("td", {}, when(e.created_at)), h("td", {}, e.kind_text), h("td", {}, e.bucket),
    h("td", { class: "num" }, e.change.display), h("td", { class: "num" }, e.balance_after.display),
    h("td", {}, e.request_id || e.order_id || e.reason || ""),
    h("td", {}, reasonForm(`reverse-${e.entry_id}`, "Reverse", async (reason) => {
      await api("POST", `/v1/operator/ledger/${encodeURIComponent(e.entry_id)}/reverse`, { reason });
      await showAccounts([id]);
      flash(`Reversed ledger row ${e.entry_id}.`, true);
    }))));
  fill($("#account"),
    h("h2", {}, `Account ${a.account_id}`),
    h("div", { class: "buckets" }, balances),
    h("h2", {}, "Adjust a balance"),
    reasonForm("adjust", "Adjust", async (reason, form) => {
      await api("POST", `/v1/operator/accounts/${encodeURIComponent(id)}/adjust`, {
        bucket: form.bucket.value, amount: form.amount.value.trim(), reason,
      });
      await showAccounts([id]);
      flash("Adjustment written.", true);
    }, [
      h("label", { for: "adjust-bucket" }, "Balance"),
      h("select", { id: "adjust-bucket", name: "bucket" }, a.balances.map((b) => h("option", { value: b.bucket }, b.label))),
      h("label", { for: "adjust-amount" }, 'Amount (signed, like "5" or "-1.25")'),
      h("input", { id: "adjust-amount", name: "amount", required: true, inputmode: "decimal" }),
    ]),
    h("h2", {}, "Holds open"),
    table(["Held", "Charged", "For", "Request", "Expires"], a.holds.map((x) => h("tr", {},
      h("td", {}, x.held.display), h("td", {}, x.charged.display),
      h("td", {}, x.for === "set_aside" ? "Set aside for fast serving" : "A request in progress"),
      h("td", {}, x.request_id), h("td", {}, when(x.expires_at)))), "No open holds."),
    h("h2", {}, "Ledger"),
    table(["When", "What", "Balance", "Change", "Balance after", "About", ""], ledger, "No ledger rows."),
    h("h2", {}, "Top-ups"),
    table(["Order", "State", "Top-up amount", "Received balance", "Opened"], a.topups.map((t) => h("tr", {},
      h("td", {}, t.order_id), h("td", { class: `state ${t.state}` }, t.state_text),
      h("td", {}, t.topup_amount.display), h("td", {}, t.received_balance.display), h("td", {}, when(t.created_at)))), "No top-ups."),
    h("h2", {}, "API keys"),
    table(["Name", "Key", "Scopes", "State"], a.keys.map((k) => h("tr", {},
      h("td", {}, k.name), h("td", {}, k.prefix || k.key_id), h("td", {}, (k.scopes || []).join(", ")),
      h("td", {}, k.revoked_at ? "Revoked" : "Active"))), "No keys."),
    h("h2", {}, "Latest receipts"),
    table(["When", "Model", "Route", "Charge", "Status", "Note"], a.receipts.map((r) => h("tr", {},
      h("td", {}, when(r.finished_at)), h("td", {}, r.selected_model), h("td", {}, r.route),
      h("td", {}, r.charge.display), h("td", { class: `state ${r.status}` }, r.status_text),
      h("td", {}, r.error === "charge_not_collected" ? "Charge not collected (its budget's hold had ended)" : (r.error || "")))), "No receipts."));
}

// ---------- catalog ----------

async function showCatalog() {
  const c = await api("GET", "/v1/operator/catalog");
  fill($("#catalog-versions"),
    h("h2", {}, `Running version ${c.version.version}`),
    table(["Version", "By", "When", "Content"], c.versions.map((v) => h("tr", {},
      h("td", {}, v.version), h("td", {}, v.created_by), h("td", {}, when(v.created_at)),
      h("td", {}, v.content_sha256.slice(0, 12)))), "No versions."));
  if (!$("#catalog-yaml").value) $("#catalog-yaml").value = c.yaml;
}

async function catalogDiff() {
  const d = await api("POST", "/v1/operator/catalog/diff", { yaml: $("#catalog-yaml").value });
  const out = $("#catalog-diff-out");
  out.hidden = false;
  out.textContent = d.diff || "No difference from the running catalog.";
}

async function catalogApply(event) {
  event.preventDefault();
  const done = await api("POST", "/v1/operator/catalog/apply", {
    yaml: $("#catalog-yaml").value, reason: $("#catalog-reason").value.trim(),
  });
  await showCatalog();
  flash(done.changed ? `Catalog ${done.version.version} applied.` : `Unchanged: ${done.version.version} already has this content.`, true);
}

// ---------- health, reconciliation, finishes, audit ----------

const CIRCUIT = { closed: "Healthy (closed)", half_open: "Trying again (half open)", open: "Failing: skipped (open)" };

async function showHealth() {
  const health = await api("GET", "/v1/operator/health");
  fill($("#health"), health.routes.map((r) => h("section", { class: "card" },
    h("h2", {}, `${r.model} · ${r.route}`),
    table(["Channel", "State", "Error rate", "Latency p50 / p95", "Last failure"], r.channels.map((c) => h("tr", { "data-channel": c.channel },
      h("td", {}, c.channel), h("td", { class: `circuit ${c.state}` }, CIRCUIT[c.state] || c.state),
      h("td", {}, `${(c.error_rate * 100).toFixed(1)} % of ${c.attempts_in_window}`),
      h("td", {}, `${c.latency_p50_ms} / ${c.latency_p95_ms} ms`),
      h("td", {}, c.last_failure ? `${c.last_failure} (${when(c.last_failure_at)})` : "none"))), "No channels."))));
}

async function showReconcile() {}

async function runReconcile() {
  const report = await api("POST", "/v1/operator/reconcile", { reason: "run from the operator console" });
  const w = report.wallet;
  const u = report.usage;
  fill($("#reconcile"), h("div", { class: "card" },
    h("p", { class: `state ${report.ok ? "credited" : "failed"}`, "data-testid": "reconcile-result" },
      report.ok ? "OK: every money rule holds" : `${w.violations.length} wallet violations, ${u.mismatches.length} usage mismatches`),
    h("h2", {}, "Wallet"),
    h("p", { class: "hint" }, `Checked ${w.accounts_checked} accounts, ${w.entries_checked} ledger rows, ${w.holds_checked} holds.`),
    table(["Rule", "Where", "What"], w.violations.map((v) => h("tr", {},
      h("td", {}, v.rule), h("td", {}, v.subject), h("td", {}, v.detail))), "No violations."),
    h("h2", {}, `Receipts against holds and ledger rows (last ${u.since_hours} hours)`),
    h("p", { class: "hint", "data-testid": "reconcile-usage" }, `Checked ${u.holds_checked} ended holds, ${u.receipts_checked} receipts, ${u.entries_checked} request-charge ledger rows.`),
    table(["Problem", "Where", "What"], u.mismatches.map((m) => h("tr", {},
      h("td", {}, m.problem), h("td", {}, m.subject), h("td", {}, m.detail))), "No mismatches.")));
}

async function showFinishes() {
  const f = await api("GET", "/v1/operator/finishes");
  fill($("#finishes"),
    h("p", { "data-testid": "finishes-waiting" }, `${f.waiting} finishes waiting (the wallet's part or the receipt not delivered yet).`),
    h("p", { "data-testid": "charges-not-collected" }, `Charges not collected by this gateway since it started: ${f.charges_not_collected} (their receipts say charge_not_collected).`),
    table(["Request", "Account", "What is left", "Attempts", "Refused", "Queued"], f.data.map((r) => h("tr", {},
      h("td", {}, r.request_id), h("td", {}, r.account_id || ""), h("td", {}, r.finish), h("td", {}, r.attempts),
      h("td", {}, r.refused || ""), h("td", {}, when(r.queued_at)))), "Nothing waits."));
}

async function showAudit() {
  const log = await api("GET", "/v1/operator/audit?limit=100");
  fill($("#audit"), table(["When", "Who", "Action", "On", "Why", "Outcome"], log.data.map((x) => h("tr", { "data-audit": x.audit_id },
    h("td", {}, when(x.at)), h("td", {}, x.operator), h("td", {}, x.action), h("td", {}, x.subject),
    h("td", {}, x.reason), h("td", {}, x.outcome))), "No operator actions yet."));
}

// ---------- wiring ----------

document.addEventListener("DOMContentLoaded", () => {
  $("#signin-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const error = $("#signin-error");
    error.hidden = true;
    signIn($("#signin-name").value.trim(), $("#signin-token").value.trim()).then(() => {
      $("#signin-token").value = "";
      location.hash = "#/reviews";
      route();
    }).catch((e) => { error.textContent = e.message; error.hidden = false; });
  });
  $("#sign-out").addEventListener("click", () => signOut(""));
  $("#account-form").addEventListener("submit", (event) => {
    event.preventDefault();
    location.hash = `#/accounts/${encodeURIComponent($("#account-id").value.trim())}`;
  });
  $("#catalog-diff").addEventListener("click", () => guarded(catalogDiff));
  $("#catalog-form").addEventListener("submit", (event) => guarded(() => catalogApply(event)));
  $("#reconcile-run").addEventListener("click", () => guarded(runReconcile));
  window.addEventListener("hashchange", route);
  route();
});
