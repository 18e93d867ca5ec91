// Keeps the status page current without reloading it: polls /status.json (every 2 s while
// something runs or waits, every 15 s otherwise) and updates only what changed. Text from
// the server goes in with textContent, never as HTML; the gallery alone is refreshed from
// the server-rendered (escaped) page when a new result has arrived.
"use strict";

const BUSY_MS = 2000;
const IDLE_MS = 15000;

const $ = id => document.getElementById(id);

function setText(id, text) {
  const node = $(id);
  if (node.textContent !== text) node.textContent = text;
}

function show(id, visible) {
  $(id).hidden = !visible;
}

function renderReadiness(state) {
  const badge = $("ready-badge");
  badge.textContent = state.ready ? "Ready" : "Not ready";
  badge.className = "badge " + (state.ready ? "ok" : "down");
  setText("ready-reasons", state.reasons.join("; "));
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function renderRunning(jobs) {
  show("running", jobs.length > 0);
  show("idle", jobs.length === 0);
  const items = jobs.map(job => {
    const li = el("li");
    li.dataset.phase = job.phase;
    const phase = job.phase.charAt(0).toUpperCase() + job.phase.slice(1);
    const bar = el("progress");
    bar.max = job.total || 1;
    bar.value = job.step;
    let time = job.elapsed_s === null ? "" : `· ${job.elapsed_s} s`;
    time += ` · about ${job.finish_in_s} s to finish`;
    li.append(
      `${phase}: ${job.kind} with `, el("code", "", job.model),
      job.prompt ? ` — “${job.prompt}”` : "", el("br"), bar, " ",
      el("span", "steps", `step ${job.step}/${job.total}`), " ", el("span", "meta", time),
    );
    return li;
  });
  $("running").replaceChildren(...items);
}

function renderTrouble(items) {
  show("trouble-section", items.length > 0);
  const list = $("trouble");
  const rows = items.map(item => {
    const li = el("li");
    const prompt = item.prompt ? ` — “${item.prompt}”` : "";
    li.append(
      el("span", "badge " + (item.state === "failed" ? "down" : "paused"), item.state),
      ` ${item.kind} with `, el("code", "", item.model), `${prompt}: ${item.reason} `,
      el("span", "meta", `${item.at} UTC`),
    );
    return li;
  });
  list.replaceChildren(...rows);
}

async function refreshGallery(key) {
  const response = await fetch("/", {cache: "no-store"});
  if (!response.ok) return;
  const fresh = new DOMParser().parseFromString(await response.text(), "text/html").getElementById("results");
  if (fresh === null) return;
  const current = $("results");
  current.replaceChildren(...[...fresh.childNodes].map(n => document.importNode(n, true)));
  current.dataset.galleryKey = key;
}

async function poll() {
  let busy = false;
  try {
    const response = await fetch("/status.json", {cache: "no-store"});
    if (response.ok) {
      const state = await response.json();
      renderReadiness(state);
      setText("queue-length", String(state.queue_length));
      show("paused", state.paused);
      renderRunning(state.running);
      renderTrouble(state.trouble);
      if (state.gallery_key !== $("results").dataset.galleryKey) await refreshGallery(state.gallery_key);
      busy = state.running.length > 0 || state.queue_length > 0;
    }
  } catch (error) {
    // the server is restarting or unreachable: keep the page as it is and try again later
  }
  document.documentElement.dataset.polls = String(Number(document.documentElement.dataset.polls || 0) + 1);
  setTimeout(poll, busy ? BUSY_MS : IDLE_MS);
}

document.addEventListener("DOMContentLoaded", () => setTimeout(poll, BUSY_MS));
