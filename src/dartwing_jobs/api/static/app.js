// Dartwing Jobs dashboard: hash-routed views over /api/v1, live via Socket.IO.
// Every string from the server is rendered with text nodes (see dom.js).

import { api, ApiError, session, seg } from "./api.js";
import { barChart } from "./charts.js";
import { clear, fmtDuration, fmtTime, h, json, shortId, timeEl } from "./dom.js";
import { live, POLL_MS } from "./live.js";

const STATUSES = ["pending", "queued", "running", "retrying", "completed", "dead_letter", "canceled"];
const STATUS_LABEL = {
  pending: "Pending", queued: "Queued", running: "Running", retrying: "Retrying",
  completed: "Completed", dead_letter: "Dead letter", canceled: "Canceled",
};
const TERMINAL = new Set(["completed", "dead_letter", "canceled"]);
const CANCELABLE = new Set(["pending", "queued", "retrying", "running"]);
const RETRYABLE = new Set(["dead_letter", "canceled"]);
const PRIORITIES = ["critical", "high", "normal", "low"];
const PAGE_SIZE = 50;
const METRICS_MS = 10_000;
const WINDOWS = [1, 6, 24, 72, 168, 720];

const state = { me: null, organizations: [], jobTypes: null, metricsMissing: false };
const main = document.getElementById("main");
let teardown = [];
let renderSeq = 0;

// ---------------------------------------------------------------- helpers

function parseHash() {
  const raw = window.location.hash.replace(/^#\/?/, "");
  const [path, query = ""] = raw.split("?");
  const parts = path.split("/").filter(Boolean).map((p) => {
    try { return decodeURIComponent(p); } catch { return p; }
  });
  return { parts, params: new URLSearchParams(query) };
}

function hashFor(path, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) if (v !== undefined && v !== null && v !== "") q.set(k, v);
  const qs = q.toString();
  return `#/${path}${qs ? `?${qs}` : ""}`;
}

function jobHref(id) { return `#/jobs/${seg(id)}`; }

function isSystemManager() { return Boolean(state.me && state.me.roles.includes("System Manager")); }

function roleIn(organization) {
  const m = state.me && state.me.organizations.find((o) => o.name === organization);
  return m ? m.role : null;
}

/** Cancel/retry rights (SPEC 2): submitter, active org admin, or System Manager. */
function canManage(job) {
  if (!state.me) return false;
  return isSystemManager() || roleIn(job.organization) === "admin" || job.submitted_by === state.me.id;
}

function statusBadge(status) {
  return h("span", { class: `badge st-${status}`, "data-status": status }, STATUS_LABEL[status] || status);
}

function progressBar(job) {
  const bar = h("span", { class: "bar" });
  const text = h("span", { class: "progress-text" });
  const el = h("div", {
    class: "progress", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100,
  }, h("span", { class: "track" }, bar), text);
  el.update = (j) => {
    const pct = Math.max(0, Math.min(100, Number(j.progress) || 0));
    bar.style.width = `${pct}%`;
    el.setAttribute("aria-valuenow", String(Math.round(pct)));
    el.dataset.status = j.status;
    const msg = j.progress_message ? ` · ${j.progress_message}` : "";
    text.textContent = `${Math.round(pct)}%${msg}`;
    el.setAttribute("aria-valuetext", text.textContent);
  };
  el.update(job);
  return el;
}

function errorBox(err) {
  const message = err instanceof ApiError ? err.message : String(err && err.message ? err.message : err);
  const code = err instanceof ApiError ? err.code : "error";
  return h("div", { class: "alert", role: "alert" }, h("strong", {}, code), " ", message);
}

function emptyState(title, ...body) {
  return h("section", { class: "empty" }, h("h2", {}, title), ...body);
}

function curlExample(organization) {
  const type = (state.jobTypes && state.jobTypes[0] && state.jobTypes[0].name) || "noop";
  const body = JSON.stringify({ job_type: type, organization: organization || "ORGANIZATION", parameters: {} });
  const quoted = `'${body.replace(/'/g, "'\\''")}'`;
  return [
    `curl -X POST ${window.location.origin}/api/v1/jobs \\`,
    `  -H "Authorization: Bearer $DARTWING_JOBS_TOKEN" \\`,
    "  -H 'Content-Type: application/json' \\",
    `  -d ${quoted}`,
  ].join("\n");
}

function codeBlock(text) {
  const pre = h("pre", { class: "code" }, h("code", {}, text));
  const btn = h("button", {
    type: "button", class: "btn btn-small",
    onclick: async () => {
      try { await navigator.clipboard.writeText(text); btn.textContent = "Copied"; } catch { btn.textContent = "Select and copy"; }
    },
  }, "Copy");
  return h("div", { class: "code-wrap" }, pre, btn);
}

function orgSelect(value, { allowAll, onchange, id = "f-org" }) {
  const select = h("select", { id, onchange: (e) => onchange(e.target.value) },
    allowAll ? h("option", { value: "" }, "All organizations") : null,
    state.organizations.map((o) => h("option", { value: o.name }, o.title && o.title !== o.name ? `${o.title} (${o.name})` : o.name)));
  select.value = value || "";
  return h("label", { class: "field", for: id }, h("span", {}, "Organization"), select);
}

function confirmDialog(title, text, okLabel) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-ok").textContent = okLabel;
  const previous = document.activeElement;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      if (previous && previous.isConnected) previous.focus();
      resolve(dialog.returnValue === "ok");
    }, { once: true });
    dialog.returnValue = "";
    dialog.showModal();
    document.getElementById("confirm-ok").focus();
  });
}

async function jobTypes() {
  if (state.jobTypes === null) {
    try { state.jobTypes = (await api("/job-types")).items; } catch { state.jobTypes = []; }
  }
  return state.jobTypes;
}

/** A per-view context: timers and live listeners that end with the view. */
function viewContext(seq) {
  const ctx = {
    alive: () => seq === renderSeq,
    every(ms, fn) {
      const id = window.setInterval(() => { if (!document.hidden && ctx.alive()) fn(); }, ms);
      teardown.push(() => window.clearInterval(id));
    },
    later(ms, fn) {
      const id = window.setTimeout(() => { if (ctx.alive()) fn(); }, ms);
      teardown.push(() => window.clearTimeout(id));
      return id;
    },
    onLive(fn) { teardown.push(live.on(fn)); },
    onMode(fn) { teardown.push(live.onMode(fn)); },
  };
  return ctx;
}

function debounce(ctx, ms, fn) {
  let timer = null;
  return () => {
    if (timer !== null) return;
    timer = ctx.later(ms, () => { timer = null; fn(); });
  };
}

// ---------------------------------------------------------------- session

async function bootstrap() {
  const [me, orgs] = await Promise.all([api("/me"), api("/organizations")]);
  state.me = me;
  state.organizations = orgs.items;
  state.jobTypes = null;
  document.getElementById("who").textContent = me.full_name ? `${me.full_name} (${me.id})` : me.id;
  document.getElementById("nav").hidden = false;
  document.getElementById("account").hidden = false;
  live.start(session.token, state.organizations.map((o) => o.name));
}

function signOut(message) {
  session.token = null;
  state.me = null;
  state.organizations = [];
  state.jobTypes = null;
  live.stop();
  document.getElementById("nav").hidden = true;
  document.getElementById("account").hidden = true;
  document.getElementById("who").textContent = "";
  signInMessage = message || "";
  if (window.location.hash !== "#/signin") window.location.hash = "#/signin";
  else render();
}

let signInMessage = "";
session.onUnauthorized = () => signOut("Your token was refused (expired or revoked). Sign in again.");

function viewSignIn(root) {
  const input = h("input", {
    id: "token", name: "token", type: "password", autocomplete: "off", spellcheck: "false",
    required: true, placeholder: "dwj_…", "aria-describedby": "token-help",
  });
  const error = h("div", { class: "signin-error", "aria-live": "assertive" });
  if (signInMessage) error.append(h("div", { class: "alert", role: "alert" }, signInMessage));
  const button = h("button", { type: "submit", class: "btn btn-primary" }, "Sign in");
  const form = h("form", {
    class: "card signin",
    onsubmit: async (e) => {
      e.preventDefault();
      clear(error);
      const token = input.value.trim();
      if (!token) return;
      button.disabled = true;
      try {
        await api("/me", { token });
        session.token = token;
        signInMessage = "";
        await bootstrap();
        const here = window.location.hash;
        if (!here || here === "#" || here === "#/" || here === "#/signin") window.location.hash = "#/jobs";
        else render();
      } catch (err) {
        error.append(err instanceof ApiError && err.status === 401
          ? h("div", { class: "alert", role: "alert" }, "That token was not accepted. Check it and try again.")
          : errorBox(err));
        button.disabled = false;
        input.focus();
      }
    },
  },
  h("h1", { tabindex: "-1" }, "Sign in"),
  h("p", { id: "token-help" },
    "Paste an API token. It is kept in this browser tab only (session storage) and sent as a bearer token. ",
    "An operator creates one with ", h("code", {}, "dartwing-jobs token create <email>"), "."),
  h("label", { for: "token", class: "field" }, h("span", {}, "API token"), input),
  error,
  h("div", { class: "actions" }, button));
  root.append(form);
  input.focus();
}

// ---------------------------------------------------------------- jobs list

function viewJobs(root, ctx, params) {
  const filters = {
    org: params.get("org") || "", status: params.get("status") || "",
    type: params.get("type") || "", q: (params.get("q") || "").trim(),
  };
  if (filters.status && !STATUSES.includes(filters.status)) filters.status = "";
  const go = (changes) => { window.location.hash = hashFor("jobs", { ...filters, ...changes }); };

  const typeSelect = h("select", { id: "f-type", onchange: (e) => go({ type: e.target.value }) },
    h("option", { value: "" }, "All job types"));
  if (filters.type) typeSelect.append(h("option", { value: filters.type }, filters.type));
  typeSelect.value = filters.type;
  jobTypes().then((types) => {
    for (const t of types) if (t.name !== filters.type) typeSelect.append(h("option", { value: t.name }, t.name));
    typeSelect.value = filters.type;
  });
  const search = h("input", {
    id: "f-q", type: "search", value: filters.q, placeholder: "Job id or part of it",
    autocomplete: "off", spellcheck: "false",
  });
  const filterForm = h("form", {
    class: "filters", role: "search", "aria-label": "Filter jobs",
    onsubmit: (e) => { e.preventDefault(); go({ q: search.value.trim() }); },
  },
  orgSelect(filters.org, { allowAll: true, onchange: (v) => go({ org: v }) }),
  h("label", { class: "field", for: "f-type" }, h("span", {}, "Job type"), typeSelect),
  h("label", { class: "field grow", for: "f-q" }, h("span", {}, "Search by id"), search),
  h("div", { class: "field-actions" }, h("button", { type: "submit", class: "btn" }, "Search")));

  const counts = {};
  const tabLinks = {};
  const tabs = h("nav", { class: "tabs", "aria-label": "Status" });
  for (const st of ["", ...STATUSES]) {
    const count = h("span", { class: "count" });
    counts[st] = count;
    const link = h("a", {
      href: hashFor("jobs", { ...filters, status: st }), class: `tab ${st ? `tab-${st}` : ""}`,
      "aria-current": filters.status === st ? "page" : null, "data-tab": st || "all",
    }, st ? STATUS_LABEL[st] : "All", " ", count);
    tabLinks[st] = link;
    tabs.append(link);
  }
  const countsNote = h("p", { class: "muted small counts-note" });

  const modeNote = h("p", { class: "muted small live-note" });
  ctx.onMode((mode) => {
    modeNote.textContent = mode === "live" ? "Live: updates arrive as they happen."
      : `Refreshing every ${POLL_MS / 1000} s (live updates unavailable).`;
  });

  const tableWrap = h("div", { class: "table-wrap" });
  const pager = h("nav", { class: "pager", "aria-label": "Pages" });
  const status = h("div", { class: "status-line", role: "status" });

  root.append(
    h("div", { class: "view-head" }, h("h1", { tabindex: "-1" }, "Jobs"), modeNote),
    filterForm, tabs, countsNote, status, tableWrap, pager,
  );

  const cursors = [null];
  let page = 0;
  let nextCursor = null;
  const rows = new Map();
  let lastItems = [];

  const looksLikeId = (q) => /^[0-9a-fA-F-]{32,36}$/.test(q);

  async function loadCounts() {
    const targets = filters.org ? [filters.org] : state.organizations.map((o) => o.name).slice(0, 25);
    if (!state.metricsMissing && targets.length) {
      try {
        const all = await Promise.all(targets.map((o) => api("/metrics", { query: { organization: o, window_hours: 24 } })));
        const totals = {};
        for (const m of all) for (const [st, n] of Object.entries(m.jobs_by_status || {})) totals[st] = (totals[st] || 0) + n;
        showCounts(totals, "Counts per status cover every job of "
          + (filters.org ? "this organization" : "your organizations") + ", whatever the job type.");
        return;
      } catch (err) {
        if (err instanceof ApiError && err.status === 404) state.metricsMissing = true;
        else return;
      }
    }
    const totals = {};
    for (const j of lastItems) totals[j.status] = (totals[j.status] || 0) + 1;
    showCounts(totals, "Counts per status are for the jobs on this page.");
  }

  function showCounts(totals, note) {
    let all = 0;
    for (const st of STATUSES) {
      const n = totals[st] || 0;
      all += n;
      counts[st].textContent = String(n);
    }
    counts[""].textContent = String(all);
    countsNote.textContent = note;
  }

  function buildRow(job) {
    const bar = progressBar(job);
    const statusCell = h("td", { "data-label": "Status", class: "cell-status" }, statusBadge(job.status));
    const attempts = h("td", { "data-label": "Attempts", class: "num" }, String(job.attempts));
    const tr = h("tr", { "data-job-id": job.id },
      h("td", { "data-label": "Job", class: "cell-id" },
        h("a", { href: jobHref(job.id), class: "mono", title: job.id, "aria-label": `Job ${job.id}` }, shortId(job.id))),
      h("td", { "data-label": "Type" }, job.job_type),
      h("td", { "data-label": "Organization" }, job.organization),
      statusCell,
      h("td", { "data-label": "Progress", class: "cell-progress" }, bar),
      attempts,
      h("td", { "data-label": "Created" }, timeEl(job.created_at)));
    const entry = {
      tr, job,
      update() {
        statusCell.replaceChildren(statusBadge(entry.job.status));
        attempts.textContent = String(entry.job.attempts);
        bar.update(entry.job);
      },
    };
    return entry;
  }

  function renderTable(items) {
    const focusedId = document.activeElement && document.activeElement.closest
      && document.activeElement.closest("tr[data-job-id]")?.dataset.jobId;
    rows.clear();
    if (!items.length) {
      tableWrap.replaceChildren(emptyJobs());
      return;
    }
    const tbody = h("tbody");
    for (const job of items) {
      const entry = buildRow(job);
      rows.set(job.id, entry);
      tbody.append(entry.tr);
    }
    tableWrap.replaceChildren(h("table", { class: "jobs job-list" },
      h("caption", { class: "sr-only" }, "Jobs, newest first"),
      h("thead", {}, h("tr", {}, ["Job", "Type", "Organization", "Status", "Progress", "Attempts", "Created"]
        .map((c) => h("th", { scope: "col" }, c)))),
      tbody));
    if (focusedId && rows.has(focusedId)) rows.get(focusedId).tr.querySelector("a").focus();
  }

  function emptyJobs() {
    if (!state.organizations.length) {
      return emptyState("You are not in any organization yet",
        h("p", {}, "Jobs belong to organizations. Ask an administrator to add you as a member, for example with ",
          h("code", {}, "dartwing-jobs member add <organization> <email>"), "."));
    }
    if (filters.q) {
      return emptyState("No job matches this id",
        h("p", {}, "Nothing visible to you matches ", h("code", {}, filters.q),
          looksLikeId(filters.q) ? ". The job does not exist or belongs to an organization you cannot see."
            : " on this page. Paste a full job id to look it up directly."),
        h("p", {}, h("a", { href: hashFor("jobs", { org: filters.org }) }, "Clear the search")));
    }
    if (filters.status || filters.type) {
      return emptyState("No jobs match these filters",
        h("p", {}, "Try another status or job type, or ",
          h("a", { href: hashFor("jobs", { org: filters.org }) }, "clear the filters"), "."));
    }
    const org = filters.org || state.organizations[0].name;
    return emptyState("No jobs yet",
      h("p", {}, "Submit a first job through the HTTP API; it appears here as soon as it is queued. ",
        "Put your API token in ", h("code", {}, "DARTWING_JOBS_TOKEN"), " and run:"),
      codeBlock(curlExample(org)),
      h("p", { class: "muted" }, "See the job types you can use in the ", h("a", { href: "/docs" }, "API docs"),
        " (GET /api/v1/job-types)."));
  }

  function renderPager() {
    const buttons = [];
    if (page > 0) {
      buttons.push(h("button", { type: "button", class: "btn", onclick: () => { page = 0; load(); } }, "« Newest"));
      buttons.push(h("button", { type: "button", class: "btn", onclick: () => { page -= 1; load(); } }, "‹ Newer"));
    }
    if (nextCursor) {
      buttons.push(h("button", {
        type: "button", class: "btn", "data-action": "next-page",
        onclick: () => { cursors[page + 1] = nextCursor; page += 1; load(); },
      }, "Older ›"));
    }
    pager.replaceChildren(...buttons, buttons.length ? h("span", { class: "muted small" }, `Page ${page + 1}`) : "");
  }

  let loading = false;
  async function load() {
    if (loading) return;
    loading = true;
    try {
      let items;
      if (filters.q && looksLikeId(filters.q)) {
        try { items = [await api(`/jobs/${seg(filters.q)}`)]; } catch (err) {
          if (err instanceof ApiError && err.status === 404) items = []; else throw err;
        }
        nextCursor = null;
      } else {
        const data = await api("/jobs", {
          query: {
            organization: filters.org, status: filters.status ? [filters.status] : [],
            job_type: filters.type, limit: PAGE_SIZE, cursor: cursors[page],
          },
        });
        items = data.items;
        nextCursor = data.next_cursor;
        if (filters.q) items = items.filter((j) => j.id.toLowerCase().includes(filters.q.toLowerCase()));
      }
      await jobTypes(); // the empty state's curl example names a real job type
      if (!ctx.alive()) return;
      lastItems = items;
      status.replaceChildren();
      renderTable(items);
      renderPager();
    } catch (err) {
      if (ctx.alive()) status.replaceChildren(errorBox(err));
    } finally {
      loading = false;
    }
  }

  const reloadSoon = debounce(ctx, 1200, () => { if (page === 0) load(); loadCounts(); });
  ctx.onLive((kind, ev) => {
    const entry = rows.get(ev.job_id);
    if (entry) {
      const j = entry.job;
      if (ev.status) j.status = ev.status;
      if (kind === "job_progress") {
        if (typeof ev.progress === "number") j.progress = ev.progress;
        if (ev.message !== undefined) j.progress_message = ev.message;
      } else {
        if (typeof ev.attempt === "number") j.attempts = ev.attempt;
        if (ev.status === "completed") j.progress = 100;
      }
      entry.update();
    }
    if (kind === "job_status") reloadSoon();
  });
  ctx.every(POLL_MS, () => { if (!live.isLive) { load(); } });
  ctx.every(30_000, () => { if (live.isLive) load(); });
  ctx.every(METRICS_MS, () => loadCounts());
  load().then(loadCounts);
}

// ---------------------------------------------------------------- job detail

function viewJob(root, ctx, id) {
  const heading = h("h1", { tabindex: "-1" }, "Job ", h("span", { class: "mono break" }, id));
  const headStatus = h("span", { class: "head-status" });
  const actions = h("div", { class: "actions job-actions" });
  const feedback = h("div", { class: "feedback", "aria-live": "polite" });
  const body = h("div", { class: "detail" }, h("p", { class: "muted" }, "Loading…"));
  root.append(
    h("p", { class: "crumbs" }, h("a", { href: "#/jobs" }, "← All jobs")),
    h("div", { class: "view-head" }, heading, headStatus),
    actions, feedback, body);

  let job = null;
  let logs = [];
  let built = null;
  let actionKey = "";

  async function load() {
    try {
      const fetched = await api(`/jobs/${seg(id)}`);
      let fetchedLogs = [];
      try { fetchedLogs = (await api(`/jobs/${seg(id)}/logs`)).items; } catch { fetchedLogs = logs; }
      if (!ctx.alive()) return;
      job = fetched;
      logs = fetchedLogs;
      paint();
    } catch (err) {
      if (!ctx.alive()) return;
      if (err instanceof ApiError && err.status === 404) {
        job = null;
        built = null;
        headStatus.replaceChildren();
        actions.replaceChildren();
        body.replaceChildren(emptyState("Job not found",
          h("p", {}, "There is no job with this id, or it belongs to an organization you cannot see."),
          h("p", {}, h("a", { href: "#/jobs" }, "Back to the jobs list"))));
        body.dataset.state = "not-found";
      } else {
        feedback.replaceChildren(errorBox(err));
      }
    }
  }

  function build() {
    const b = {};
    b.progress = progressBar(job);
    b.progressMessage = h("p", { class: "muted small" });
    b.summary = h("dl", { class: "facts" });
    b.params = h("pre", { class: "code" });
    b.outcome = h("div");
    b.checkpoint = h("div");
    b.deps = h("div", { class: "deps" });
    b.logs = h("div");
    body.replaceChildren(
      h("section", { class: "card span-2" }, h("h2", {}, "Progress"), b.progress, b.progressMessage),
      h("section", { class: "card" }, h("h2", {}, "Summary"), b.summary),
      h("section", { class: "card" }, h("h2", {}, "Parameters"), b.params),
      h("section", { class: "card span-2" }, h("h2", {}, "Outcome"), b.outcome),
      h("section", { class: "card" }, h("h2", {}, "Checkpoint"), b.checkpoint),
      h("section", { class: "card" }, h("h2", {}, "Dependencies"), b.deps),
      h("section", { class: "card span-2" }, h("h2", {}, "Execution log"), b.logs));
    delete body.dataset.state;
    built = b;
    paintDeps();
  }

  function fact(term, value) {
    return [h("dt", {}, term), h("dd", {}, value)];
  }

  function paint() {
    if (!built) build();
    const b = built;
    headStatus.replaceChildren(statusBadge(job.status),
      job.cancel_requested && job.status === "running" ? h("span", { class: "badge st-cancel-requested" }, "cancel requested") : "");
    b.progress.update(job);
    b.progressMessage.textContent = job.progress_message ? `Last message: ${job.progress_message}` : "No progress message.";
    b.summary.replaceChildren(
      ...fact("Type", job.job_type),
      ...fact("Organization", job.organization),
      ...fact("Priority", job.priority),
      ...fact("Attempts", `${job.attempts} (up to ${job.max_retries} retries)`),
      ...fact("Timeout", job.timeout_seconds ? `${job.timeout_seconds} s` : "none"),
      ...fact("Submitted by", job.submitted_by || "—"),
      ...fact("Created", timeEl(job.created_at)),
      ...fact("Run at", timeEl(job.run_at)),
      ...fact("Started", timeEl(job.started_at)),
      ...fact("Finished", timeEl(job.completed_at)),
      ...fact("Next retry", timeEl(job.next_retry_at)),
      ...fact("Hash", h("span", { class: "mono break small" }, job.job_hash)));
    b.params.textContent = json(job.parameters);
    if (job.error) {
      const parts = [h("p", { class: "error-line" }, h("strong", {}, job.error.type), ": ", job.error.message || "")];
      if (job.error.traceback) {
        parts.push(h("details", { open: true }, h("summary", {}, "Traceback"),
          h("pre", { class: "code traceback" }, job.error.traceback)));
      }
      b.outcome.replaceChildren(h("h3", { class: "sub" }, "Error"), ...parts);
    } else if (job.status === "completed") {
      b.outcome.replaceChildren(h("h3", { class: "sub" }, "Result"), h("pre", { class: "code" }, json(job.result)));
    } else {
      b.outcome.replaceChildren(h("p", { class: "muted" }, "No result yet."));
    }
    b.checkpoint.replaceChildren(job.checkpoint === null || job.checkpoint === undefined
      ? h("p", { class: "muted" }, "No checkpoint saved.")
      : h("pre", { class: "code" }, json(job.checkpoint)));
    paintLogs();
    paintActions();
  }

  function paintLogs() {
    const items = logs.slice().sort((a, b) => a.attempt - b.attempt);
    const list = h("ol", { class: "timeline" });
    for (const entry of items) {
      list.append(h("li", { class: `tl-item outcome-${entry.outcome || "unknown"}` },
        h("div", { class: "tl-head" }, h("strong", {}, `Attempt ${entry.attempt}`), " ",
          h("span", { class: `badge oc-${entry.outcome || "unknown"}` }, entry.outcome || "unfinished")),
        h("div", { class: "tl-meta small" }, "Started ", timeEl(entry.started_at), " · took ",
          fmtDuration(entry.duration_ms), entry.worker_id ? ` · worker ${entry.worker_id}` : ""),
        entry.error ? h("div", { class: "tl-error" }, h("strong", {}, entry.error.type), ": ", entry.error.message || "") : ""));
    }
    const logged = new Set(items.map((e) => e.attempt));
    if (job.status === "running" && !logged.has(job.attempts)) {
      list.append(h("li", { class: "tl-item outcome-running" },
        h("div", { class: "tl-head" }, h("strong", {}, `Attempt ${job.attempts}`), " ", statusBadge("running")),
        h("div", { class: "tl-meta small" }, "Started ", timeEl(job.started_at))));
    }
    built.logs.replaceChildren(list.children.length ? list
      : h("p", { class: "muted" }, "No attempt yet: the job has not been picked up by a worker."));
  }

  function paintActions() {
    const mayManage = canManage(job);
    const canCancel = CANCELABLE.has(job.status) && !job.cancel_requested;
    const canRetry = RETRYABLE.has(job.status);
    const key = `${mayManage}|${canCancel}|${canRetry}|${job.cancel_requested}|${job.status === "running"}`;
    if (key === actionKey) return;
    actionKey = key;
    const focused = actions.contains(document.activeElement) ? document.activeElement.dataset.action : null;
    const items = [];
    if (mayManage && canCancel) {
      items.push(h("button", { type: "button", class: "btn btn-danger", "data-action": "cancel", onclick: () => act("cancel") }, "Cancel job"));
    }
    if (mayManage && canRetry) {
      items.push(h("button", { type: "button", class: "btn btn-primary", "data-action": "retry", onclick: () => act("retry") }, "Retry job"));
    }
    if (job.cancel_requested && job.status === "running") {
      items.push(h("p", { class: "muted small" }, "Cancellation requested: waiting for the handler to stop."));
    }
    if (!mayManage && (canCancel || canRetry)) {
      items.push(h("p", { class: "muted small" }, "Only the submitter, an admin of this organization or a System Manager can cancel or retry this job."));
    }
    actions.replaceChildren(...items);
    if (focused) actions.querySelector(`[data-action="${focused}"]`)?.focus();
  }

  async function act(action) {
    const ok = await confirmDialog(
      action === "cancel" ? "Cancel this job?" : "Retry this job?",
      action === "cancel"
        ? `Job ${id} (${job.job_type}) will be canceled${job.status === "running" ? " once its handler stops" : ""}. Jobs that depend on it are canceled too.`
        : `Job ${id} (${job.job_type}) will be queued again for new attempts.`,
      action === "cancel" ? "Cancel job" : "Retry job");
    if (!ok || !ctx.alive()) return;
    feedback.replaceChildren();
    try {
      job = await api(`/jobs/${seg(id)}/${action}`, { method: "POST" });
      if (!ctx.alive()) return;
      feedback.replaceChildren(h("p", { class: "notice", role: "status" },
        action === "cancel"
          ? (job.status === "canceled" ? "Job canceled." : "Cancellation requested.")
          : "Job queued for a new attempt."));
      paint();
      load();
    } catch (err) {
      if (ctx.alive()) feedback.replaceChildren(errorBox(err));
      load();
    }
  }

  async function paintDeps() {
    const b = built;
    const dependsOn = job.depends_on || [];
    const upList = h("ul", { class: "dep-list" });
    b.deps.replaceChildren(h("h3", { class: "sub" }, "Depends on"),
      dependsOn.length ? upList : h("p", { class: "muted" }, "No dependencies."),
      h("h3", { class: "sub" }, "Needed by"));
    const downWrap = h("div", {}, h("p", { class: "muted small" }, "Looking for jobs that depend on this one…"));
    b.deps.append(downWrap);
    for (const depId of dependsOn.slice(0, 50)) {
      const li = h("li", {}, h("a", { href: jobHref(depId), class: "mono" }, shortId(depId)));
      upList.append(li);
      api(`/jobs/${seg(depId)}`).then((d) => li.append(" ", d.job_type, " ", statusBadge(d.status)))
        .catch(() => li.append(" ", h("span", { class: "muted" }, "(not visible)")));
    }
    let found = Array.isArray(job.dependents) ? null : [];
    let complete = true;
    if (found === null) {
      found = [];
      for (const d of job.dependents) found.push(typeof d === "string" ? { id: d } : d);
    } else {
      // No dependents field in the job JSON: scan the organization's jobs created
      // after this one (a dependent is always submitted after its dependency).
      try {
        let cursor = null;
        const since = Date.parse(job.created_at);
        complete = false;
        for (let i = 0; i < 5; i += 1) {
          const data = await api("/jobs", { query: { organization: job.organization, limit: 200, cursor } });
          for (const j of data.items) if ((j.depends_on || []).includes(job.id)) found.push(j);
          const last = data.items[data.items.length - 1];
          if (!data.next_cursor || !last || Date.parse(last.created_at) < since) { complete = true; break; }
          cursor = data.next_cursor;
        }
      } catch { complete = false; }
    }
    if (!ctx.alive()) return;
    const parts = [];
    if (found.length) {
      parts.push(h("ul", { class: "dep-list" }, found.map((d) => h("li", {},
        h("a", { href: jobHref(d.id), class: "mono" }, shortId(d.id)),
        d.job_type ? [" ", d.job_type, " ", statusBadge(d.status)] : ""))));
    } else {
      parts.push(h("p", { class: "muted" }, "No job depends on this one."));
    }
    if (!complete) parts.push(h("p", { class: "muted small" }, "Only the 1,000 newest jobs of the organization were searched."));
    downWrap.replaceChildren(...parts);
  }

  ctx.onLive((kind, ev) => {
    if (ev.job_id !== id || !job) return;
    if (kind === "job_progress") {
      if (typeof ev.progress === "number") job.progress = ev.progress;
      if (ev.message !== undefined) job.progress_message = ev.message;
      if (ev.status) job.status = ev.status;
      paint();
    } else {
      load();
    }
  });
  ctx.every(POLL_MS, () => { if (!live.isLive) load(); });
  ctx.every(30_000, () => { if (live.isLive) load(); });
  load();
}

// ---------------------------------------------------------------- metrics

function viewMetrics(root, ctx, params) {
  const orgs = state.organizations;
  const org = params.get("org") || (orgs[0] && orgs[0].name) || "";
  let windowHours = Number(params.get("window")) || 24;
  if (!WINDOWS.includes(windowHours)) windowHours = 24;
  const go = (changes) => { window.location.hash = hashFor("metrics", { org, window: windowHours, ...changes }); };

  const windowSelect = h("select", { id: "f-window", onchange: (e) => go({ window: e.target.value }) },
    WINDOWS.map((w) => h("option", { value: w }, w <= 24 ? `Last ${w} h` : `Last ${w / 24} days`)));
  windowSelect.value = String(windowHours);
  const updated = h("p", { class: "muted small", role: "status" });
  const grid = h("div", { class: "metrics-grid" });
  root.append(
    h("div", { class: "view-head" }, h("h1", { tabindex: "-1" }, "Metrics"), updated),
    h("form", { class: "filters", onsubmit: (e) => e.preventDefault() },
      orgSelect(org, { allowAll: false, onchange: (v) => go({ org: v }) }),
      h("label", { class: "field", for: "f-window" }, h("span", {}, "Window"), windowSelect)),
    grid);
  if (!orgs.length) {
    grid.replaceChildren(emptyState("No organization to show",
      h("p", {}, "Metrics are per organization, and you are not a member of any yet.")));
    return;
  }

  const card = (title, content, note) => h("section", { class: "card metric-card" }, h("h2", {}, title),
    note ? h("p", { class: "muted small" }, note) : "", content);

  async function load() {
    let m;
    try {
      m = await api("/metrics", { query: { organization: org, window_hours: windowHours } });
      state.metricsMissing = false;
    } catch (err) {
      if (!ctx.alive()) return;
      if (err instanceof ApiError && err.status === 404 && err.code !== "not_found_organization") {
        grid.replaceChildren(emptyState("Metrics are not available yet",
          h("p", {}, "This server does not answer ", h("code", {}, "GET /api/v1/metrics"),
            " yet. Update Dartwing Jobs; this page retries every 10 s."),
          h("p", { class: "muted small" }, err.message)));
      } else {
        grid.replaceChildren(errorBox(err));
      }
      return;
    }
    if (!ctx.alive()) return;
    const byStatus = m.jobs_by_status || {};
    const statusRows = STATUSES.map((st) => ({
      label: STATUS_LABEL[st], values: [{ value: byStatus[st] || 0, text: String(byStatus[st] || 0), cls: `fill-${st}` }],
    }));
    const depth = m.queue_depth_by_priority || {};
    const depthKeys = [...PRIORITIES.filter((p) => p in depth), ...Object.keys(depth).filter((p) => !PRIORITIES.includes(p))];
    const depthRows = (depthKeys.length ? depthKeys : PRIORITIES).map((p) => ({
      label: p, values: [{ value: depth[p] || 0, text: String(depth[p] || 0), cls: `fill-p-${p}` }],
    }));
    const pt = m.processing_time || {};
    const timeRows = Object.keys(pt).sort().filter((t) => pt[t] && pt[t].count > 0).map((t) => ({
      label: t,
      values: [
        { value: pt[t].p50_ms || 0, text: `p50 ${fmtDuration(pt[t].p50_ms)}`, cls: "fill-p50" },
        { value: pt[t].p95_ms || 0, text: `p95 ${fmtDuration(pt[t].p95_ms)}`, cls: "fill-p95" },
      ],
    }));
    const fr = m.failure_rate || {};
    const failRows = Object.keys(fr).sort().filter((t) => fr[t] && fr[t].attempts > 0).map((t) => ({
      label: t,
      values: [{ value: fr[t].rate || 0, text: `${((fr[t].rate || 0) * 100).toFixed(1)}% (${fr[t].failures}/${fr[t].attempts})`, cls: "fill-fail" }],
    }));
    const total = Object.values(byStatus).reduce((a, n) => a + n, 0);
    const windowText = windowHours <= 24 ? `${windowHours} h` : `${windowHours / 24} days`;
    grid.replaceChildren(
      card("Jobs by status", barChart({ title: "Jobs by status", rows: statusRows }), `${total} jobs in the organization now.`),
      card("Queue depth by priority", barChart({ title: "Queue depth by priority", rows: depthRows }),
        "Jobs waiting to run (queued or retrying)."),
      card("Processing time per job type", barChart({
        title: "Processing time p50 and p95 per job type", rows: timeRows,
        legend: [{ label: "p50", cls: "fill-p50" }, { label: "p95", cls: "fill-p95" }],
        emptyText: `No attempt finished in the last ${windowText}.`,
      }), `Attempts finished in the last ${windowText}.`),
      card("Failure rate per job type", barChart({
        title: "Failure rate per job type", rows: failRows, max: 1,
        emptyText: `No attempt finished in the last ${windowText}.`,
      }), `Failed attempts / attempts, last ${windowText}.`));
    updated.textContent = `${m.organization} · updated ${fmtTime(new Date().toISOString())} · refreshes every 10 s`;
  }
  ctx.every(METRICS_MS, load);
  ctx.onLive((kind, ev) => { if (kind === "job_status" && ev.organization === org) reloadSoon(); });
  const reloadSoon = debounce(ctx, 3000, load);
  load();
}

// ---------------------------------------------------------------- dead letters

function viewDeadLetters(root, ctx, params) {
  const org = params.get("org") || "";
  const go = (changes) => { window.location.hash = hashFor("dead-letters", { org, ...changes }); };
  const selected = new Set();
  const retryButton = h("button", { type: "button", class: "btn btn-primary", disabled: true, "data-action": "retry-selected", onclick: () => retry([...selected]) }, "Retry selected");
  const feedback = h("div", { class: "feedback", "aria-live": "polite" });
  const tableWrap = h("div", { class: "table-wrap" });
  const pager = h("nav", { class: "pager", "aria-label": "Pages" });
  root.append(
    h("div", { class: "view-head" }, h("h1", { tabindex: "-1" }, "Dead letters"),
      h("p", { class: "muted small" }, "Jobs whose retries ran out or that failed permanently. Fix the cause, then retry them.")),
    h("form", { class: "filters", onsubmit: (e) => e.preventDefault() },
      orgSelect(org, { allowAll: true, onchange: (v) => go({ org: v }) }),
      h("div", { class: "field-actions" }, retryButton)),
    feedback, tableWrap, pager);

  const cursors = [null];
  let page = 0;
  let items = [];
  let nextCursor = null;

  function syncButton() {
    retryButton.disabled = selected.size === 0;
    retryButton.textContent = selected.size ? `Retry selected (${selected.size})` : "Retry selected";
  }

  function render() {
    for (const idSel of [...selected]) if (!items.some((j) => j.id === idSel)) selected.delete(idSel);
    syncButton();
    if (!items.length) {
      tableWrap.replaceChildren(emptyState("No dead-lettered jobs",
        h("p", {}, "Nothing is waiting for an operator. A job lands here when its retries are exhausted or its handler raises ",
          h("code", {}, "PermanentFailure"), "; you can retry it from here once the cause is fixed.")));
      pager.replaceChildren();
      return;
    }
    const manageable = items.filter(canManage);
    const all = h("input", {
      type: "checkbox", "aria-label": "Select all retryable jobs on this page",
      checked: manageable.length > 0 && manageable.every((j) => selected.has(j.id)),
      disabled: manageable.length === 0,
      onchange: (e) => {
        for (const j of manageable) { if (e.target.checked) selected.add(j.id); else selected.delete(j.id); }
        render();
      },
    });
    const tbody = h("tbody");
    for (const job of items) {
      const may = canManage(job);
      const box = h("input", {
        type: "checkbox", "aria-label": `Select job ${job.id}`, checked: selected.has(job.id), disabled: !may,
        onchange: (e) => { if (e.target.checked) selected.add(job.id); else selected.delete(job.id); syncButton(); all.checked = manageable.every((j) => selected.has(j.id)); },
      });
      const err = job.error || {};
      tbody.append(h("tr", { "data-job-id": job.id },
        h("td", { "data-label": "Select", class: "cell-check" }, box),
        h("td", { "data-label": "Job", class: "cell-id" }, h("a", { href: jobHref(job.id), class: "mono", title: job.id, "aria-label": `Job ${job.id}` }, shortId(job.id))),
        h("td", { "data-label": "Type" }, job.job_type),
        h("td", { "data-label": "Organization" }, job.organization),
        h("td", { "data-label": "Last error", class: "cell-error" },
          err.type ? h("div", {}, h("strong", {}, err.type), ": ", h("span", { title: err.message || "" }, (err.message || "").slice(0, 200))) : h("span", { class: "muted" }, "—")),
        h("td", { "data-label": "Attempts", class: "num" }, String(job.attempts)),
        h("td", { "data-label": "Failed" }, timeEl(job.completed_at)),
        h("td", { "data-label": "Action" }, may
          ? h("button", { type: "button", class: "btn btn-small", "data-action": "retry", "aria-label": `Retry job ${job.id}`, onclick: () => retry([job.id]) }, "Retry")
          : h("span", { class: "muted small" }, "not yours to retry"))));
    }
    tableWrap.replaceChildren(h("table", { class: "jobs dead" },
      h("caption", { class: "sr-only" }, "Dead-lettered jobs"),
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, all),
        ["Job", "Type", "Organization", "Last error", "Attempts", "Failed", "Action"].map((c) => h("th", { scope: "col" }, c)))),
      tbody));
    const buttons = [];
    if (page > 0) buttons.push(h("button", { type: "button", class: "btn", onclick: () => { page -= 1; load(); } }, "‹ Newer"));
    if (nextCursor) buttons.push(h("button", { type: "button", class: "btn", onclick: () => { cursors[page + 1] = nextCursor; page += 1; load(); } }, "Older ›"));
    pager.replaceChildren(...buttons);
  }

  async function load() {
    try {
      const data = await api("/jobs", { query: { organization: org, status: ["dead_letter"], limit: PAGE_SIZE, cursor: cursors[page] } });
      if (!ctx.alive()) return;
      items = data.items;
      nextCursor = data.next_cursor;
      render();
    } catch (err) {
      if (ctx.alive()) feedback.replaceChildren(errorBox(err));
    }
  }

  async function retry(ids) {
    if (!ids.length) return;
    const ok = await confirmDialog(
      ids.length === 1 ? "Retry this job?" : `Retry ${ids.length} jobs?`,
      ids.length === 1 ? `Job ${ids[0]} will be queued again for new attempts.`
        : `${ids.length} dead-lettered jobs will be queued again for new attempts.`,
      "Retry");
    if (!ok || !ctx.alive()) return;
    const failures = [];
    let done = 0;
    for (const jobId of ids) {
      try { await api(`/jobs/${seg(jobId)}/retry`, { method: "POST" }); done += 1; selected.delete(jobId); } catch (err) { failures.push([jobId, err]); }
    }
    if (!ctx.alive()) return;
    feedback.replaceChildren(
      done ? h("p", { class: "notice", role: "status" }, `${done} job${done === 1 ? "" : "s"} queued again.`) : "",
      ...failures.map(([jobId, err]) => h("div", { class: "alert", role: "alert" },
        h("span", { class: "mono" }, shortId(jobId)), ": ", err.message)));
    load();
  }

  const reloadSoon = debounce(ctx, 1500, load);
  ctx.onLive((kind) => { if (kind === "job_status") reloadSoon(); });
  ctx.every(POLL_MS, () => { if (!live.isLive) load(); });
  load();
}

// ---------------------------------------------------------------- organizations

function viewOrganizations(root) {
  const sm = isSystemManager();
  const me = state.me;
  root.append(h("div", { class: "view-head" }, h("h1", { tabindex: "-1" }, "Organizations"),
    h("p", { class: "muted small" }, sm ? "As a System Manager you see every organization." : "The organizations you are an active member of.")),
  h("p", { class: "signed-in-as" }, "Signed in as ", h("strong", {}, me.full_name || me.id),
    me.full_name ? ` (${me.id})` : "", me.roles.length ? ` · roles: ${me.roles.join(", ")}` : ""));
  if (!state.organizations.length) {
    root.append(emptyState("No organizations",
      h("p", {}, "You are not an active member of any organization. Ask an administrator to add you, for example with ",
        h("code", {}, "dartwing-jobs member add <organization> <email>"), ".")));
    return;
  }
  root.append(h("div", { class: "table-wrap" }, h("table", { class: "jobs orgs" },
    h("thead", {}, h("tr", {}, ["Organization", "Name", "Your role", "Created", "Go to"].map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, state.organizations.map((o) => h("tr", { "data-org": o.name },
      h("td", { "data-label": "Organization" }, o.title || o.name),
      h("td", { "data-label": "Name", class: "mono" }, o.name),
      h("td", { "data-label": "Your role" }, roleIn(o.name) || (sm ? "System Manager" : "—")),
      h("td", { "data-label": "Created" }, timeEl(o.created_at)),
      h("td", { "data-label": "Go to" }, h("div", { class: "links" },
        h("a", { href: hashFor("jobs", { org: o.name }) }, "Jobs"), " ",
        h("a", { href: hashFor("metrics", { org: o.name }) }, "Metrics"), " ",
        h("a", { href: hashFor("dead-letters", { org: o.name }) }, "Dead letters")))))))));
}

// ---------------------------------------------------------------- router

async function render() {
  for (const fn of teardown) fn();
  teardown = [];
  const seq = ++renderSeq;
  const ctx = viewContext(seq);
  const { parts, params } = parseHash();
  const root = h("div", { class: "view", "data-view": parts[0] || "jobs" });

  if (!state.me && session.token) {
    try { await bootstrap(); } catch (err) {
      if (seq !== renderSeq) return;
      if (!(err instanceof ApiError && err.status === 401)) {
        main.replaceChildren(h("div", { class: "view" }, errorBox(err),
          h("button", { type: "button", class: "btn", onclick: () => render() }, "Try again")));
        return;
      }
      session.token = null;
    }
    if (seq !== renderSeq) return;
  }

  const signedIn = Boolean(state.me);
  const name = signedIn ? (parts[0] || "jobs") : "signin";
  if (signedIn && parts[0] === "signin") { window.location.hash = "#/jobs"; return; }
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.dataset.route === name) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  main.replaceChildren(root);
  root.dataset.view = name;
  if (!signedIn) viewSignIn(root);
  else if (name === "jobs" && parts[1]) viewJob(root, ctx, parts[1]);
  else if (name === "jobs") viewJobs(root, ctx, params);
  else if (name === "metrics") viewMetrics(root, ctx, params);
  else if (name === "dead-letters") viewDeadLetters(root, ctx, params);
  else if (name === "organizations") viewOrganizations(root);
  else {
    root.append(emptyState("Page not found", h("p", {}, h("a", { href: "#/jobs" }, "Go to the jobs list"))));
  }
  document.title = `${signedIn ? (name === "jobs" && parts[1] ? "Job" : (name[0].toUpperCase() + name.slice(1)).replace("-", " ")) : "Sign in"} · Dartwing Jobs`;
  if (navigatedByUser && signedIn) root.querySelector("h1")?.focus({ preventScroll: true });
  navigatedByUser = true;
}

let navigatedByUser = false;

function init() {
  document.getElementById("zone").textContent = Intl.DateTimeFormat().resolvedOptions().timeZone || "your local time zone";
  document.getElementById("sign-out").addEventListener("click", () => signOut("You are signed out."));
  const liveStatus = document.getElementById("live-status");
  live.onMode((mode) => {
    liveStatus.dataset.mode = mode;
    liveStatus.textContent = { live: "● live", polling: "polling", connecting: "connecting…", off: "offline" }[mode];
    liveStatus.title = mode === "live" ? "Live updates over Socket.IO" : `Live updates unavailable; views refresh every ${POLL_MS / 1000} s`;
  });
  window.addEventListener("hashchange", () => render());
  render();
}

init();
