"use strict";
// The review page: asks the server for the next pair, sends each answer, keeps nothing but the
// reviewer's name locally (the answers live in the server's SQLite file).
const state = {session: null, pair: null, busy: false, conflictOf: null};
const $ = (id) => document.getElementById(id);
const KEYS = {s: "same", d: "different", n: "not_sure", k: "skip"};

async function api(path, payload) {
  const response = await fetch(path, {
    method: "POST", credentials: "same-origin",
    headers: {"Content-Type": "application/json", "X-Review-Session": state.session || ""},
    body: JSON.stringify(payload || {}),
  });
  let data = {};
  try { data = await response.json(); } catch (err) { data = {error: "the server sent no JSON"}; }
  return {status: response.status, data};
}

function say(text) { $("message").textContent = text || ""; }

function showProgress(progress) {
  if (!progress) return;
  const parts = [`${progress.answers} answers`, `${progress.ambiguous} pairs still ambiguous`];
  for (const [what, count] of Object.entries(progress.changes || {})) parts.push(`${what}: ${count}`);
  for (const [dataset, refit] of Object.entries(progress.refits || {})) {
    parts.push(`${dataset} threshold ${refit.from.toFixed(2)} -> ${refit.to.toFixed(2)} from your answers`);
  }
  $("progress").textContent = parts.join(" · ");
}

function metaText(image) {
  const bits = [image.name];
  if (image.identity) bits.push(`identity ${image.identity}`);
  for (const [key, value] of Object.entries(image.meta || {})) bits.push(`${key}: ${value}`);
  return bits.join(" · ");
}

function fillStrip(id, context) {
  const strip = $(id);
  strip.replaceChildren();
  $(id + "-title").textContent = context && context.ids.length ? context.title : "";
  for (const image of (context ? context.ids : [])) {
    const img = document.createElement("img");
    img.src = `/image/${image}?size=thumb`;
    img.alt = "another photo";
    img.dataset.image = image;
    img.addEventListener("click", () => zoom(image));
    strip.appendChild(img);
  }
}

function render(data) {
  showProgress(data.progress);
  const view = data.pair;
  state.pair = view;
  if (!view) {
    $("review").classList.add("hidden");
    $("done").classList.remove("hidden");
    return;
  }
  $("done").classList.add("hidden");
  $("review").classList.remove("hidden");
  $("review").dataset.pair = view.pair;
  $("question").textContent = view.task === "identify"
    ? `Is the photo on the left the individual ${view.right.identity} (right)?`
    : "Do these two photos show the same individual?";
  for (const side of ["left", "right"]) {
    $(side).src = `/image/${view[side].id}?size=screen`;
    $(side).dataset.image = view[side].id;
    $(side + "-meta").textContent = metaText(view[side]);
    fillStrip(side + "-context", view[side + "_context"]);
  }
  $("toggle-matches").classList.toggle("hidden", !view.matches);
  $("matches-panel").classList.add("hidden");
  $("matches").removeAttribute("src");
  const scorers = view.scorers.map((s) => `${s.name} ${s.probability.toFixed(2)}`).join(", ");
  const recalibrated = view.model_probability === null ? ""
    : `, re-calibrated on your answers (the model said ${view.model_probability.toFixed(2)})`;
  $("scores").textContent = `${view.dataset}: P(same) ${view.probability.toFixed(2)}${recalibrated} (threshold `
    + `${view.threshold.toFixed(2)}); ${view.decision}` + (scorers ? `; scorers: ${scorers}` : "");
}

async function next() {
  const {status, data} = await api("/api/next");
  if (status !== 200) return say(data.error);
  render(data);
}

async function answer(verdict, keep) {
  if (state.busy || !state.pair) return;
  state.busy = true;
  try {
    const {status, data} = await api("/api/answer", {pair: state.pair.pair, answer: verdict, keep: keep || null});
    if (status === 409 && data.conflict) {
      state.conflictOf = verdict;
      const c = data.conflict;
      $("conflict-text").textContent = `"${verdict.replace("_", " ")}" contradicts `
        + (c.against.length ? `earlier answers (#${c.against.join(", #")})` : "")
        + (c.against.length && c.labels ? " and " : "") + (c.labels ? "the dataset's own labels" : "")
        + ". Which do you keep?";
      $("keep-new").disabled = c.against.length === 0;
      $("conflict").classList.remove("hidden");
      return;
    }
    if (status !== 200) return say(data.error);
    say(`answer #${data.stored} stored`);
    render(data);
  } finally {
    state.busy = false;
  }
}

async function settle(keep) {
  $("conflict").classList.add("hidden");
  const verdict = state.conflictOf;
  state.conflictOf = null;
  if (keep && verdict) await answer(verdict, keep);
}

async function undo() {
  if (state.busy) return;
  state.busy = true;
  try {
    const {status, data} = await api("/api/undo");
    if (status !== 200) return say(data.error);
    say("last answer undone");
    render(data);
  } finally {
    state.busy = false;
  }
}

async function apply() {
  const {status, data} = await api("/api/apply");
  say(status === 200 ? `reviewed files written to ${data.folder}` : data.error);
}

function toggleMatches() {
  if (!state.pair || !state.pair.matches) return;
  const panel = $("matches-panel");
  if (panel.classList.contains("hidden") && !$("matches").getAttribute("src")) {
    $("matches").src = `/matches/${state.pair.pair}`;
  }
  panel.classList.toggle("hidden");
}

function zoom(image) {
  $("zoomed").src = `/image/${image}?size=full`;
  $("zoom").classList.remove("hidden");
}

async function setName(name) {
  const {status, data} = await api("/api/reviewer", {name});
  if (status !== 200) {
    $("who").classList.remove("hidden");
    return say(data.error);
  }
  localStorage.setItem("reidzoo-reviewer", data.reviewer);
  $("who").classList.add("hidden");
  await next();
}

async function start() {
  const {status, data} = await api("/api/session");
  if (status !== 200) {
    $("progress").textContent = data.error || "the review server refused this page";
    return;
  }
  state.session = data.session;
  $("run").textContent = `${data.run} (${data.task})`;
  const name = localStorage.getItem("reidzoo-reviewer");
  if (name) await setName(name);
  else $("who").classList.remove("hidden");
}

document.addEventListener("DOMContentLoaded", () => {
  $("who").addEventListener("submit", (event) => { event.preventDefault(); setName($("name").value); });
  for (const verdict of Object.values(KEYS)) $(verdict).addEventListener("click", () => answer(verdict));
  $("undo").addEventListener("click", undo);
  $("toggle-matches").addEventListener("click", toggleMatches);
  $("apply").addEventListener("click", apply);
  $("keep-new").addEventListener("click", () => settle("new"));
  $("keep-earlier").addEventListener("click", () => settle("earlier"));
  $("zoom").addEventListener("click", () => $("zoom").classList.add("hidden"));
  for (const side of ["left", "right"]) $(side).addEventListener("click", () => zoom($(side).dataset.image));
  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey || !$("who").classList.contains("hidden")) return;
    const key = event.key.toLowerCase();
    if (!$("zoom").classList.contains("hidden")) {
      if (key === "escape") $("zoom").classList.add("hidden");
      return;
    }
    if (!$("conflict").classList.contains("hidden")) {
      if (key === "1" && !$("keep-new").disabled) settle("new");
      else if (key === "2") settle("earlier");
      else if (key === "escape") settle(null);
      return;
    }
    if (KEYS[key]) answer(KEYS[key]);
    else if (key === "z") undo();
    else if (key === "m") toggleMatches();
  });
  start();
});
