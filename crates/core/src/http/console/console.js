// firestore-once operator console. Plain DOM, no framework: everything shown comes from the
// service's own JSON endpoints and is inserted as text (never as HTML), since dead letters
// hold whatever a sender put in them.
"use strict";

const $ = (sel) => document.querySelector(sel);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function badge(text) {
  return el("span", { class: "badge " + String(text).replace(/[^a-z_]/g, "") }, text);
}

function when(ts) {
  if (!ts) return "";
  const d = new Date(ts);
  return isNaN(d) ? ts : d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

async function getJson(url, options) {
  const r = await fetch(url, options);
  const body = await r.json().catch(() => ({}));
  if (!r.ok) {
    const why = body.detail || body.title || r.statusText;
    throw new Error(`${r.status}: ${why}`);
  }
  return body;
}

function defs(pairs) {
  const dl = el("dl");
  for (const [k, v] of pairs) {
    if (v === undefined || v === null || v === "") continue;
    dl.append(el("dt", {}, k), el("dd", {}, v));
  }
  return dl;
}

function leaseText(l) {
  if (!l) return "";
  return `${l.holder} until ${when(l.expires_at)}${l.expired ? " (expired)" : ""}`;
}

function showOperation(op) {
  const box = $("#lookup-result");
  box.className = "card";
  box.dataset.outcome = op.outcome;
  box.dataset.operationId = op.operation_id;
  const d = op.delivery || {};
  box.replaceChildren(
    defs([
      ["outcome", badge(op.outcome)],
      ["operation", op.operation_id],
      ["kind", op.kind],
      ["key", op.key],
      ["reason", op.reason],
      ["decided", when(op.created_at)],
      ["expires", when(op.expire_at)],
      ["delivered by", d.source ? `${d.source}${d.id ? " " + d.id : ""}` : ""],
      ["lease", leaseText(op.lease)],
      ["task", op.task ? `${op.task.kind} step ${op.task.step} (${op.task.operation_id})` : ""],
    ]),
  );
  if (op.steps) {
    const rows = op.steps.map((s) =>
      el("tr", {}, el("td", {}, s.step), el("td", {}, badge(s.outcome)), el("td", {}, s.reason || ""),
        el("td", {}, when(s.created_at)), el("td", {}, leaseText(s.lease))));
    box.append(el("h3", {}, "Steps"), el("table", { id: "steps-table" },
      el("thead", {}, el("tr", {}, ...["step", "outcome", "reason", "committed", "lease"].map((h) => el("th", {}, h)))),
      el("tbody", {}, ...rows)));
  }
  if (op.response) {
    box.append(el("h3", {}, `Stored answer (${op.response.status})`),
      el("pre", {}, JSON.stringify(op.response.body, null, 2)));
  }
}

async function lookup(kind, value) {
  const box = $("#lookup-result");
  box.className = "card empty";
  box.textContent = "Looking up…";
  delete box.dataset.outcome;
  try {
    const q = new URLSearchParams({ [kind]: value });
    showOperation(await getJson(`/operations/lookup?${q}`));
  } catch (e) {
    box.className = "card error";
    box.dataset.outcome = "none";
    box.textContent = `Not found or failed: ${e.message}`;
  }
}

async function loadOperations() {
  const q = new URLSearchParams({ limit: "25" });
  if ($("#ops-outcome").value) q.set("outcome", $("#ops-outcome").value);
  if ($("#ops-kind").value.trim()) q.set("kind", $("#ops-kind").value.trim());
  const tbody = $("#ops-table tbody");
  try {
    const { operations } = await getJson(`/operations?${q}`);
    tbody.replaceChildren(...operations.map((o) =>
      el("tr", { "data-id": o.operation_id, onclick: () => lookup("operation_id", o.operation_id) },
        el("td", {}, when(o.created_at)), el("td", {}, o.kind), el("td", {}, o.key),
        el("td", {}, badge(o.outcome)), el("td", {}, o.reason || ""),
        el("td", {}, `${o.delivery_source}${o.delivery_id ? " " + o.delivery_id : ""}`))));
    if (!operations.length) tbody.replaceChildren(el("tr", {}, el("td", { colspan: "6", class: "empty" }, "No operations.")));
  } catch (e) {
    tbody.replaceChildren(el("tr", {}, el("td", { colspan: "6", class: "error" }, e.message)));
  }
}

function redriveText(r) {
  if (!r) return "never";
  return `${r.last_result || "?"} (${r.attempts} attempt${r.attempts === 1 ? "" : "s"})`;
}

async function showDeadLetter(id) {
  const box = $("#dl-detail");
  for (const tr of document.querySelectorAll("#dl-table tbody tr")) tr.classList.toggle("selected", tr.dataset.id === id);
  try {
    const d = await getJson(`/dead-letters/${id}`);
    const button = el("button", { id: "dl-redrive", type: "button" }, "Redrive");
    const result = el("div", { id: "dl-redrive-result" });
    button.addEventListener("click", async () => {
      button.disabled = true;
      result.textContent = "Redriving…";
      try {
        const r = await getJson(`/dead-letters/${id}/redrive`, { method: "POST" });
        result.dataset.result = r.result;
        result.replaceChildren("Result: ", badge(r.result), r.detail ? ` ${r.detail}` : "",
          r.operation_id ? ` operation ${r.operation_id}` : "");
      } catch (e) {
        result.dataset.result = "error";
        result.textContent = `Redrive failed: ${e.message}`;
      }
      button.disabled = false;
      loadDeadLetters();
    });
    box.className = "card";
    box.dataset.id = id;
    const headers = el("table", {}, el("tbody", {}, ...Object.entries(d.headers).map(([k, v]) =>
      el("tr", {}, el("td", {}, k), el("td", {}, v)))));
    box.replaceChildren(
      defs([
        ["id", d.id], ["route", d.route], ["reason", badge(d.reason)], ["detail", d.detail],
        ["recorded", when(d.created_at)],
        ["delivered by", `${d.delivery_source}${d.delivery_id ? " " + d.delivery_id : ""}`],
        ["body", `${d.body_bytes} bytes, ${d.body_encoding}${d.body_truncated ? ", truncated" : ""}`],
        ["redrive", redriveText(d.redrive)],
      ]),
      el("h3", {}, "Headers"), headers,
      el("h3", {}, "Body"), el("pre", { id: "dl-body" }, d.body),
      button, result,
    );
  } catch (e) {
    box.className = "card error";
    box.textContent = e.message;
  }
}

async function loadDeadLetters() {
  const q = new URLSearchParams({ limit: "25" });
  if ($("#dl-reason").value.trim()) q.set("reason", $("#dl-reason").value.trim());
  const tbody = $("#dl-table tbody");
  try {
    const { dead_letters } = await getJson(`/dead-letters?${q}`);
    const selected = $("#dl-detail").dataset.id;
    tbody.replaceChildren(...dead_letters.map((d) =>
      el("tr", { "data-id": d.id, class: d.id === selected ? "selected" : "", onclick: () => showDeadLetter(d.id) },
        el("td", {}, when(d.created_at)), el("td", {}, d.route), el("td", {}, badge(d.reason)),
        el("td", {}, `${d.delivery_source}${d.delivery_id ? " " + d.delivery_id : ""}`),
        el("td", {}, d.redrive && d.redrive.resolved ? badge(d.redrive.last_result) : redriveText(d.redrive)))));
    if (!dead_letters.length) tbody.replaceChildren(el("tr", {}, el("td", { colspan: "5", class: "empty" }, "No dead letters.")));
  } catch (e) {
    tbody.replaceChildren(el("tr", {}, el("td", { colspan: "5", class: "error" }, e.message)));
  }
}

// Prometheus text format: keep the once_* samples, sum nothing, show each series.
async function loadCounters() {
  const box = $("#counters-body");
  try {
    const r = await fetch("/metrics");
    if (r.status === 404) {
      box.className = "card empty";
      box.dataset.state = "absent";
      box.textContent = "metrics not enabled";
      return;
    }
    if (!r.ok) throw new Error(`${r.status}`);
    const samples = (await r.text()).split("\n")
      .filter((l) => l.startsWith("once_") && !/_bucket[{ ]/.test(l))
      .map((l) => { const i = l.lastIndexOf(" "); return [l.slice(0, i), l.slice(i + 1)]; });
    box.className = "card";
    box.dataset.state = "live";
    if (!samples.length) { box.textContent = "no once_* series yet"; return; }
    box.replaceChildren(el("div", { class: "counter-grid" },
      ...samples.flatMap(([name, v]) => [el("span", {}, name), el("span", {}, Number(v).toLocaleString("en"))])));
  } catch (e) {
    box.className = "card error";
    box.textContent = `metrics unavailable: ${e.message}`;
  }
}

$("#lookup-form").addEventListener("submit", (e) => {
  e.preventDefault();
  lookup($("#lookup-kind").value, $("#lookup-value").value.trim());
});
$("#ops-form").addEventListener("submit", (e) => { e.preventDefault(); loadOperations(); });
$("#dl-form").addEventListener("submit", (e) => { e.preventDefault(); loadDeadLetters(); });
$("#status-line").textContent = `${location.host} · loaded ${when(new Date().toISOString())}`;
loadOperations();
loadDeadLetters();
loadCounters();
setInterval(loadCounters, 5000);
document.body.dataset.ready = "true";
