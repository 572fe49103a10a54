// Tollgate's admin UI: plain DOM, no framework. Everything from the API is put into the page
// with textContent / DOM nodes (never parsed as HTML): key aliases and metadata are user input.

import { stackedBars, swatch } from "/ui/chart.js";

const KEY_STORAGE = "tollgate.key";
const $ = (id) => document.getElementById(id);

// ---- DOM helpers ---------------------------------------------------------------------------

/// el("td", {class: "num"}, "text", child, ...): strings become text nodes.
function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k in node && typeof v !== "string") node[k] = v;
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function usd(v) {
  if (v === null || v === undefined) return "—";
  const n = Number(v);
  if (n === 0) return "$0";
  return "$" + (Math.abs(n) >= 100 ? n.toFixed(2) : String(Number(n.toPrecision(4))));
}

function when(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return isNaN(d) ? String(iso) : d.toLocaleString();
}

/// Spend against a budget: a meter (amber from 80 %, red from 95 %) and the percentage.
function usage(spend, max) {
  if (max === null || max === undefined) return el("span", { class: "muted" }, "no limit");
  const pct = max > 0 ? (100 * (spend || 0)) / max : 100;
  return el("span", {},
    el("meter", { min: 0, max: max > 0 ? max : 1, value: Math.min(spend || 0, max > 0 ? max : 1), low: 0.8 * max, high: 0.95 * max, optimum: 0, title: `${usd(spend)} of ${usd(max)}` }),
    " ", `${pct.toFixed(0)}%`);
}

function cells(values) {
  return values.map((v) => (v instanceof Node ? el("td", {}, v) : el("td", {}, v ?? "—")));
}

function money(v) {
  return el("td", { class: "num" }, usd(v));
}

function table(id, headers, rows) {
  return el("table", { id },
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colspan: headers.length, class: "muted" }, "Nothing here yet."))));
}

function field(label, name, attrs) {
  return el("label", {}, label, el("input", { name, ...attrs }));
}

function select(label, name, options, attrs) {
  return el("label", {}, label, el("select", { name, ...attrs }, options.map(([v, t]) => el("option", { value: v }, t))));
}

const DURATIONS = [["", "none"], ["1d", "daily"], ["7d", "weekly"], ["30d", "monthly"], ["1h", "hourly"]];

/// The form's non-empty fields: numbers where the input is a number, lists split on commas.
function formBody(form, lists = []) {
  const body = {};
  for (const input of form.elements) {
    if (!input.name || input.value.trim() === "") continue;
    const v = input.value.trim();
    if (input.type === "number") body[input.name] = Number(v);
    else if (lists.includes(input.name)) body[input.name] = v.split(",").map((s) => s.trim()).filter(Boolean);
    else body[input.name] = v;
  }
  return body;
}

// ---- API -----------------------------------------------------------------------------------

function signedInKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${signedInKey()}` };
  if (body !== undefined) headers["content-type"] = "application/json";
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  let data = text;
  try { data = JSON.parse(text); } catch { /* not JSON: keep the text */ }
  if (!res.ok) {
    const msg = data?.error?.message ?? (data?.detail ? JSON.stringify(data.detail) : text);
    throw new Error(`${res.status}: ${msg}`);
  }
  return data;
}

function showStatus(err) {
  $("status").textContent = err ? String(err.message || err) : "";
}

/// Runs an action; its failure is shown, then the page is redrawn.
function action(fn, confirmText) {
  return async (ev) => {
    ev?.preventDefault?.();
    if (confirmText && !window.confirm(confirmText)) return;
    try {
      showStatus(null);
      await fn(ev);
    } catch (e) {
      showStatus(e);
    }
    await render();
  };
}

/// A raw key, shown once.
function showSecret(box, what, raw) {
  box.replaceChildren(
    el("strong", {}, `${what}: `), el("code", { id: "new-key-value" }, raw),
    el("div", { class: "muted" }, "Copy it now: it is not shown again."));
  box.hidden = false;
}

// ---- pages ---------------------------------------------------------------------------------

const secretBox = el("div", { class: "secret", id: "new-key", hidden: true });

async function keysPage(page) {
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  const pageNo = Number(params.get("page") || 1);
  const list = await api("GET", `/key/list?return_full_object=true&size=100&page=${pageNo}`);
  const search = el("input", { id: "key-search", type: "search", placeholder: "Search alias, key, team, user", value: sessionStorage.getItem("tollgate.keySearch") || "" });
  const form = el("form", { class: "inline", id: "key-create" },
    field("Alias", "key_alias", { id: "new-key-alias" }),
    field("Max budget (USD)", "max_budget", { id: "new-key-budget", type: "number", step: "any", min: 0 }),
    select("Budget resets", "budget_duration", DURATIONS, { id: "new-key-budget-duration" }),
    field("Models (comma separated)", "models", {}),
    field("TPM limit", "tpm_limit", { type: "number", min: 0 }),
    field("RPM limit", "rpm_limit", { type: "number", min: 0 }),
    field("Max parallel", "max_parallel_requests", { type: "number", min: 0 }),
    field("Expires after (e.g. 30d)", "duration", {}),
    field("Team id", "team_id", {}),
    field("User id", "user_id", {}),
    el("button", { class: "primary", type: "submit", id: "key-create-submit" }, "Create key"));
  form.addEventListener("submit", action(async () => {
    const created = await api("POST", "/key/generate", formBody(form, ["models"]));
    showSecret(secretBox, `New key ${created.key_alias ?? ""}`.trim(), created.key);
  }));
  const rows = list.keys.map((k) => el("tr", { dataset: { token: k.token } },
    el("td", { class: "alias" }, k.key_alias ?? "—"),
    el("td", {}, el("code", {}, k.key_name || "")),
    ...cells([k.team_id, k.user_id, k.models?.length ? k.models.join(", ") : "all"]),
    money(k.spend), money(k.max_budget),
    el("td", {}, when(k.budget_reset_at)),
    el("td", {}, usage(k.spend, k.max_budget)),
    el("td", {}, [k.tpm_limit ?? "—", k.rpm_limit ?? "—"].join(" / ")),
    el("td", {}, when(k.expires)),
    el("td", { class: k.blocked ? "blocked" : "" }, k.blocked ? "blocked" : "active"),
    el("td", {},
      k.blocked
        ? el("button", { type: "button", class: "unblock", onclick: action(() => api("POST", "/key/unblock", { key: k.token })) }, "Unblock")
        : el("button", { type: "button", class: "block", onclick: action(() => api("POST", "/key/block", { key: k.token })) }, "Block"),
      el("button", { type: "button", class: "regenerate", onclick: action(async () => {
        const r = await api("POST", "/key/regenerate", { key: k.token });
        showSecret(secretBox, `Regenerated ${k.key_alias ?? k.key_name}`, r.key);
      }, "Regenerate this key? The old key stops working.") }, "Regenerate"),
      el("button", { type: "button", class: "danger delete", onclick: action(() => api("POST", "/key/delete", { keys: [k.token] }), "Delete this key?") }, "Delete"))));
  const filter = () => {
    const q = search.value.trim().toLowerCase();
    sessionStorage.setItem("tollgate.keySearch", search.value);
    for (const tr of rows) tr.hidden = q !== "" && !tr.textContent.toLowerCase().includes(q) && !tr.dataset.token.includes(q);
  };
  search.addEventListener("input", filter);
  const pager = el("span", { class: "muted" }, `${list.total_count} key${list.total_count === 1 ? "" : "s"}, page ${list.current_page} of ${Math.max(1, list.total_pages)} `,
    pageNo > 1 ? el("a", { href: `#keys?page=${pageNo - 1}` }, "previous") : null, " ",
    pageNo < list.total_pages ? el("a", { href: `#keys?page=${pageNo + 1}` }, "next") : null);
  page.replaceChildren(
    el("h1", {}, "Keys"),
    el("h2", {}, "Create a key"), form, secretBox,
    el("div", { class: "toolbar" }, search, pager),
    table("keys-table", ["Alias", "Key", "Team", "User", "Models", "Spend", "Max budget", "Resets", "Used", "TPM / RPM", "Expires", "Status", ""], rows));
  filter();
}

async function teamsPage(page) {
  const teams = await api("GET", "/team/list");
  const form = el("form", { class: "inline", id: "team-create" },
    field("Alias", "team_alias", {}), field("Team id (optional)", "team_id", {}),
    field("Max budget (USD)", "max_budget", { type: "number", step: "any", min: 0 }),
    select("Budget resets", "budget_duration", DURATIONS, {}),
    field("Models (comma separated)", "models", {}),
    el("button", { class: "primary", type: "submit" }, "Create team"));
  form.addEventListener("submit", action(() => api("POST", "/team/new", formBody(form, ["models"]))));
  const member = el("form", { class: "inline", id: "member-add" },
    select("Team", "team_id", teams.map((t) => [t.team_id, t.team_alias || t.team_id]), {}),
    field("User id", "user_id", { required: true }),
    select("Role", "role", [["user", "user"], ["admin", "admin"]], {}),
    el("button", { type: "submit" }, "Add member"));
  member.addEventListener("submit", action(() => {
    const b = formBody(member);
    return api("POST", "/team/member_add", { team_id: b.team_id, member: { user_id: b.user_id, role: b.role } });
  }));
  const rows = teams.map((t) => el("tr", {},
    el("td", { class: "alias" }, t.team_alias ?? "—"), el("td", {}, el("code", {}, t.team_id)),
    el("td", {}, (t.members_with_roles || []).map((m) => el("div", {},
      `${m.user_id ?? m.user_email ?? "?"} (${m.role})`, " ",
      el("button", { type: "button", title: "Remove from team", onclick: action(() => api("POST", "/team/member_delete", { team_id: t.team_id, user_id: m.user_id }), "Remove this member?") }, "×")))),
    money(t.spend), money(t.max_budget), el("td", {}, when(t.budget_reset_at)),
    el("td", {}, usage(t.spend, t.max_budget)),
    el("td", { class: t.blocked ? "blocked" : "" }, t.blocked ? "blocked" : "active"),
    el("td", {},
      el("button", { type: "button", onclick: action(() => api("POST", t.blocked ? "/team/unblock" : "/team/block", { team_id: t.team_id })) }, t.blocked ? "Unblock" : "Block"),
      el("button", { type: "button", class: "danger", onclick: action(() => api("POST", "/team/delete", { team_ids: [t.team_id] }), "Delete this team and its keys?") }, "Delete"))));
  page.replaceChildren(el("h1", {}, "Teams"), form, teams.length ? member : null,
    table("teams-table", ["Alias", "Team id", "Members", "Spend", "Max budget", "Resets", "Used", "Status", ""], rows));
}

async function usersPage(page) {
  const list = await api("GET", "/user/list?page_size=100");
  const form = el("form", { class: "inline", id: "user-create" },
    field("User id", "user_id", {}), field("Email", "user_email", { type: "email" }),
    select("Role", "user_role", [["internal_user", "internal user"], ["internal_user_viewer", "internal user (view)"], ["proxy_admin_viewer", "admin (view)"], ["proxy_admin", "admin"]], {}),
    field("Max budget (USD)", "max_budget", { type: "number", step: "any", min: 0 }),
    select("Budget resets", "budget_duration", DURATIONS, {}),
    el("button", { class: "primary", type: "submit" }, "Create user"));
  form.addEventListener("submit", action(async () => {
    const u = await api("POST", "/user/new", formBody(form));
    if (u.key) showSecret(secretBox, `Key of ${u.user_id}`, u.key);
  }));
  const rows = list.users.map((u) => el("tr", {},
    el("td", { class: "alias" }, u.user_id), ...cells([u.user_email, u.user_role, (u.teams || []).join(", ")]),
    money(u.spend), money(u.max_budget), el("td", {}, when(u.budget_reset_at)), el("td", {}, usage(u.spend, u.max_budget)),
    el("td", {}, el("button", { type: "button", class: "danger", onclick: action(() => api("POST", "/user/delete", { user_ids: [u.user_id] }), "Delete this user and their keys?") }, "Delete"))));
  page.replaceChildren(el("h1", {}, "Users"), form, secretBox,
    table("users-table", ["User id", "Email", "Role", "Teams", "Spend", "Max budget", "Resets", "Used", ""], rows));
}

async function customersPage(page) {
  const list = await api("GET", "/customer/list");
  const form = el("form", { class: "inline", id: "customer-create" },
    field("Customer id", "user_id", { required: true }), field("Alias", "alias", {}),
    field("Max budget (USD)", "max_budget", { type: "number", step: "any", min: 0 }),
    field("Budget id", "budget_id", {}),
    el("button", { class: "primary", type: "submit" }, "Create customer"));
  form.addEventListener("submit", action(() => api("POST", "/customer/new", formBody(form))));
  const rows = list.map((c) => {
    const b = c.litellm_budget_table || {};
    return el("tr", {},
      el("td", { class: "alias" }, c.user_id), ...cells([c.alias, c.budget_id]),
      money(c.spend), money(b.max_budget), el("td", {}, when(b.budget_reset_at)), el("td", {}, usage(c.spend, b.max_budget)),
      el("td", { class: c.blocked ? "blocked" : "" }, c.blocked ? "blocked" : "active"),
      el("td", {},
        el("button", { type: "button", onclick: action(() => api("POST", c.blocked ? "/customer/unblock" : "/customer/block", { user_ids: [c.user_id] })) }, c.blocked ? "Unblock" : "Block"),
        el("button", { type: "button", class: "danger", onclick: action(() => api("POST", "/customer/delete", { user_ids: [c.user_id] }), "Delete this customer?") }, "Delete")));
  });
  page.replaceChildren(el("h1", {}, "Customers"), form,
    table("customers-table", ["Customer", "Alias", "Budget id", "Spend", "Max budget", "Resets", "Used", "Status", ""], rows));
}

async function budgetsPage(page) {
  const list = await api("GET", "/budget/list");
  const form = el("form", { class: "inline", id: "budget-create" },
    field("Budget id", "budget_id", {}),
    field("Max budget (USD)", "max_budget", { type: "number", step: "any", min: 0 }),
    select("Resets", "budget_duration", DURATIONS, {}),
    field("TPM limit", "tpm_limit", { type: "number", min: 0 }),
    field("RPM limit", "rpm_limit", { type: "number", min: 0 }),
    el("button", { class: "primary", type: "submit" }, "Create budget"));
  form.addEventListener("submit", action(() => api("POST", "/budget/new", formBody(form))));
  const rows = list.map((b) => el("tr", {},
    el("td", { class: "alias" }, b.budget_id), money(b.max_budget), money(b.soft_budget),
    ...cells([b.budget_duration]), el("td", {}, when(b.budget_reset_at)),
    ...cells([b.tpm_limit, b.rpm_limit, b.max_parallel_requests]),
    el("td", {}, el("button", { type: "button", class: "danger", onclick: action(() => api("POST", "/budget/delete", { id: b.budget_id }), "Delete this budget?") }, "Delete"))));
  page.replaceChildren(el("h1", {}, "Budgets"),
    el("p", { class: "muted" }, "Budgets are shared limits: customers and team members linked to one spend against it on their own row."),
    form, table("budgets-table", ["Budget id", "Max budget", "Soft budget", "Resets every", "First reset", "TPM", "RPM", "Max parallel", ""], rows));
}

function isoDay(d) {
  return d.toISOString().slice(0, 10);
}

/// Spend per day and group from /user/daily/activity: {days, series: [{name, values}]}.
function spendSeries(activity, days, group) {
  const byName = new Map();
  const index = new Map(days.map((d, i) => [d, i]));
  for (const day of activity.results) {
    const i = index.get(day.date);
    if (i === undefined) continue;
    const add = (name, spend) => {
      if (!byName.has(name)) byName.set(name, new Array(days.length).fill(0));
      byName.get(name)[i] += spend;
    };
    if (group === "model") {
      for (const [m, v] of Object.entries(day.breakdown.models)) add(m, v.metrics.spend);
    } else {
      for (const [k, v] of Object.entries(day.breakdown.api_keys)) {
        const meta = v.metadata || {};
        const name = group === "team" ? (meta.team_id || "(no team)") : (meta.key_alias || `${k.slice(0, 8)}…`);
        add(name, v.metrics.spend);
      }
    }
  }
  let series = [...byName.entries()].map(([name, values]) => ({ name, values, total: values.reduce((a, b) => a + b, 0) }));
  series.sort((a, b) => b.total - a.total);
  if (series.length > 8) {
    const rest = series.slice(7);
    series = series.slice(0, 7);
    series.push({ name: "other", values: days.map((_, i) => rest.reduce((s, r) => s + r.values[i], 0)), total: rest.reduce((s, r) => s + r.total, 0) });
  }
  return series;
}

async function spendPage(page) {
  const group = sessionStorage.getItem("tollgate.chartGroup") || "model";
  const range = Number(sessionStorage.getItem("tollgate.chartRange") || 30);
  const end = new Date();
  const days = [];
  for (let i = range - 1; i >= 0; i--) days.push(isoDay(new Date(end.getTime() - i * 86400000)));
  const [activity, logs, global] = await Promise.all([
    api("GET", `/user/daily/activity?start_date=${days[0]}&end_date=${days[days.length - 1]}`),
    api("GET", "/spend/logs?limit=50"),
    api("GET", "/global/spend").catch(() => null),
  ]);
  const series = spendSeries(activity, days, group);
  const groupSelect = el("select", { id: "chart-group" }, [["model", "by model"], ["key", "by key"], ["team", "by team"]].map(([v, t]) => el("option", { value: v, selected: v === group }, t)));
  groupSelect.addEventListener("change", () => { sessionStorage.setItem("tollgate.chartGroup", groupSelect.value); render(); });
  const rangeSelect = el("select", { id: "chart-range" }, [[7, "7 days"], [30, "30 days"], [90, "90 days"]].map(([v, t]) => el("option", { value: v, selected: v === range }, t)));
  rangeSelect.addEventListener("change", () => { sessionStorage.setItem("tollgate.chartRange", rangeSelect.value); render(); });
  const meta = activity.metadata;
  const card = (label, value, id) => el("div", { class: "card" }, el("div", { class: "muted" }, label), el("div", { class: "value", id }, value));
  const callRows = logs.map((r) => el("tr", {},
    el("td", {}, when(r.startTime)),
    el("td", { class: "alias" }, r.metadata?.user_api_key_alias ?? `${String(r.api_key).slice(0, 8)}…`),
    ...cells([r.model, r.user || null, r.team_id, r.end_user || null]),
    el("td", { class: "num" }, `${r.prompt_tokens} / ${r.completion_tokens}`),
    money(r.spend), el("td", {}, r.status)));
  page.replaceChildren(
    el("h1", {}, "Spend"),
    el("div", { class: "cards" },
      card(`Spend, last ${range} days`, usd(meta.total_spend), "range-spend"),
      card("Requests", String(meta.total_api_requests), "range-requests"),
      card("Tokens", String(meta.total_tokens), "range-tokens"),
      global ? card("Proxy spend", global.max_budget ? `${usd(global.spend)} of ${usd(global.max_budget)}` : usd(global.spend), "global-spend") : null),
    el("div", { class: "toolbar" }, el("strong", {}, "Spend per day (UTC)"), groupSelect, rangeSelect),
    el("div", { class: "chart" }, stackedBars(days, series),
      el("div", { class: "legend", id: "chart-legend" }, series.map((s, i) => el("span", {}, swatch(i), s.name, " ", el("span", { class: "muted" }, usd(s.total)))))),
    el("h2", {}, "Recent calls"),
    table("calls-table", ["Time", "Key", "Model", "User", "Team", "Customer", "Tokens in / out", "Spend", "Status"], callRows));
}

const PAGES = { keys: keysPage, teams: teamsPage, users: usersPage, customers: customersPage, budgets: budgetsPage, spend: spendPage };

// ---- shell ---------------------------------------------------------------------------------

async function render() {
  const signedIn = !!signedInKey();
  $("signin").hidden = signedIn;
  $("nav").hidden = !signedIn;
  $("signout").hidden = !signedIn;
  $("page").hidden = !signedIn;
  if (!signedIn) return;
  const name = location.hash.slice(1).split("?")[0] || "keys";
  for (const a of $("nav").querySelectorAll("a")) a.classList.toggle("active", a.getAttribute("href") === `#${name}`);
  const page = $("page");
  try {
    await (PAGES[name] || keysPage)(page);
    page.dataset.loaded = name;
  } catch (e) {
    page.replaceChildren(el("h1", {}, name), el("p", { class: "error" }, String(e.message || e)));
    page.dataset.loaded = name;
  }
}

$("signin-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const key = $("signin-key").value.trim();
  sessionStorage.setItem(KEY_STORAGE, key);
  try {
    await api("GET", "/key/list?size=1");
    $("signin-error").textContent = "";
    $("signin-key").value = "";
    await render();
  } catch (e) {
    sessionStorage.removeItem(KEY_STORAGE);
    $("signin-error").textContent = String(e.message || e);
  }
});

$("signout").addEventListener("click", () => {
  sessionStorage.clear();
  location.hash = "";
  render();
});

window.addEventListener("hashchange", () => { showStatus(null); secretBox.hidden = true; render(); });
render();
