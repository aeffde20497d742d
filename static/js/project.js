// The project page: upload data, see classes and rejects, train with live progress,
// compare results, and classify a dropped image.
import { api, learnThumbnailUrl, reportError, showAlert, thumbnailUrl, upload } from "./api.js";
import { $, fill, h, pct, plural } from "./dom.js";
import { isBatch, runBatch } from "./batch.js";
import { dropzone } from "./dropzone.js";
import { renderPrediction } from "./predictions.js";
import { setupPublish, showLive } from "./publish.js";
import { formatElapsed, ProgressClock, progressParts } from "./progress.js";
import { cellImages, learnTitles, renderResults, SOURCE_TITLES, thumb, TITLES } from "./results.js";
import { webcam } from "./webcam.js";
import { manage } from "./manage.js";

const projectId = document.getElementById("main").dataset.projectId;
const base = `/projects/${projectId}`;
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const THUMBS_SHOWN = 24;

const state = {
  project: null,
  iterations: [],
  iteration: null,
  live: null, // the iteration predictions use (published, else latest)
  job: null,
  pollTimer: null,
};

// ---- the project and its classes -------------------------------------------------------------

/** [{label, train, test}] from whatever shape the project's classes come in. */
function classRows(project) {
  const rows = new Map();
  const row = (label) => {
    if (!rows.has(label)) rows.set(label, { label, train: 0, test: 0 });
    return rows.get(label);
  };
  const add = (value, split) => {
    if (!value) return;
    if (Array.isArray(value)) {
      for (const c of value) {
        if (typeof c === "string") { row(c); continue; }
        const r = row(c.label ?? c.name);
        if (split) r[split] = c.count ?? c.n ?? 0;
        else {
          r.train = c.train ?? c.count ?? c.n_train ?? c.train_count ?? r.train;
          r.test = c.test ?? c.n_test ?? c.test_count ?? r.test;
        }
      }
    } else if (typeof value === "object") {
      for (const [label, v] of Object.entries(value)) {
        const r = row(label);
        if (typeof v === "number") r[split || "train"] = v;
        else if (v && typeof v === "object") {
          r.train = v.train ?? v.count ?? r.train;
          r.test = v.test ?? r.test;
        }
      }
    }
  };
  add(project.classes, null);
  add(project.counts, "train");
  add(project.train_counts, "train");
  add(project.test_counts, "test");
  add(project.test_classes, "test");
  return [...rows.values()].sort((a, b) => a.label.localeCompare(b.label));
}

function renderHeader(project) {
  $("#project-title").textContent = project.name || `Project ${projectId}`;
  document.title = `${project.name || `Project ${projectId}`} · Transferlab`;
  const names = (project.backbones || []).map((b) => (typeof b === "string" ? b : b.name));
  $("#project-meta").textContent = names.length ? `Backbones: ${names.map((n) => TITLES[n] || n).join(", ")}` : "";
}

const observer = "IntersectionObserver" in window
  ? new IntersectionObserver((entries) => {
    for (const entry of entries) {
      if (entry.isIntersecting) {
        observer.unobserve(entry.target);
        loadThumbs(entry.target);
      }
    }
  }, { rootMargin: "200px" })
  : null;

async function loadThumbs(strip, all = false) {
  const { label, split, total } = strip.dataset;
  try {
    const query = new URLSearchParams({ label, split });
    const body = await api(`${base}/images?${query}`);
    const images = Array.isArray(body) ? body : body.images || [];
    const first = images[0];
    if (first) learnThumbnailUrl(first.sha256, first.thumbnail || first.thumbnail_url);
    const shown = all ? images : images.slice(0, THUMBS_SHOWN);
    strip.replaceChildren(...shown.map((im) => {
      const name = im.name || im.filename || im.source || im.original_name || im.sha256.slice(0, 12);
      return h("img", { src: im.thumbnail || im.thumbnail_url || thumbnailUrl(im.sha256), alt: name, title: name,
        loading: "lazy", width: 64, height: 64, class: "thumb-sm" });
    }));
    const more = images.length - shown.length;
    if (more > 0) {
      strip.append(h("button", { type: "button", class: "btn btn-small more-thumbs", text: `Show all ${images.length}`,
        onclick: () => loadThumbs(strip, true) }));
    }
    if (!images.length && Number(total)) strip.append(h("span", { class: "muted", text: "No thumbnails." }));
  } catch (err) {
    strip.replaceChildren(h("span", { class: "muted", text: "Could not load thumbnails." }));
    reportError(err);
  }
}

function thumbStrip(label, split, count) {
  const strip = h("div", { class: "thumb-strip", dataset: { label, split, total: String(count) },
    "aria-label": `${split === "test" ? "Test" : "Training"} images of ${label}` },
  h("span", { class: "muted", text: "Loading thumbnails…" }));
  if (observer) observer.observe(strip); else loadThumbs(strip);
  return strip;
}

function renderClasses(project) {
  const rows = classRows(project);
  const list = $("#class-list");
  const nTrain = rows.reduce((a, r) => a + r.train, 0);
  const nTest = rows.reduce((a, r) => a + r.test, 0);
  $("#dataset-summary").textContent = rows.length
    ? `${plural(rows.length, "class", "classes")} · ${plural(nTrain, "training image")} · ${plural(nTest, "test image")}`
    : "";
  if (!rows.length) {
    classTools(false);
    list.replaceChildren(h("p", { class: "empty", text: "No images yet. Drop a zip with one folder per class above." }));
    return rows;
  }
  const card = (r) => h("section", { class: "class-card", dataset: { label: r.label } },
    h("header", { class: "class-head" },
      h("h4", { class: "class-name", text: r.label, title: r.label }),
      h("span", { class: "class-count", text: plural(r.train, "image") }),
      r.test ? h("span", { class: "class-count test", text: `${r.test} test` }) : null,
      r.train < 2 ? h("span", { class: "badge badge-warn", text: "needs more images" }) : null),
    r.train ? thumbStrip(r.label, "train", r.train) : null,
    r.test ? h("div", { class: "test-row" }, h("span", { class: "strip-label", text: "Test" }), thumbStrip(r.label, "test", r.test)) : null);
  classTools(rows.length > MANY_CLASSES);
  if (rows.length <= MANY_CLASSES) {
    list.replaceChildren(...rows.map(card));
    return rows;
  }
  // Many classes: a filter, and the cards a page at a time (each card's thumbnails load when shown).
  let shownCount = CLASSES_SHOWN;
  const draw = () => {
    const q = classQuery.trim().toLowerCase();
    const matching = q ? rows.filter((r) => r.label.toLowerCase().includes(q)) : rows;
    list.replaceChildren(...matching.slice(0, shownCount).map(card));
    const more = $("#class-more");
    const left = matching.length - Math.min(shownCount, matching.length);
    more.hidden = left <= 0;
    more.textContent = `Show ${Math.min(left, CLASSES_SHOWN)} more (${left} not shown)`;
    $("#class-filter-status").textContent = q
      ? `${plural(matching.length, "class", "classes")} match`
      : `showing ${Math.min(shownCount, rows.length)} of ${rows.length}`;
  };
  $("#class-filter").oninput = () => { classQuery = $("#class-filter").value; shownCount = CLASSES_SHOWN; draw(); };
  $("#class-more").onclick = () => { shownCount += CLASSES_SHOWN; draw(); };
  draw();
  return rows;
}

const MANY_CLASSES = 30;
const CLASSES_SHOWN = 24;
let classQuery = "";

/** The filter above the class list and the "show more" button below it (many classes only). */
function classTools(on) {
  const list = $("#class-list");
  let tools = $("#class-tools");
  if (!tools && on) {
    tools = h("div", { id: "class-tools", class: "class-tools" },
      h("input", { id: "class-filter", type: "search", class: "class-filter", placeholder: "Filter classes",
        "aria-label": "Filter classes by name", "aria-controls": "class-list" }),
      h("span", { id: "class-filter-status", class: "muted", "aria-live": "polite" }));
    list.before(tools);
    list.after(h("button", { id: "class-more", type: "button", class: "btn btn-small class-more", hidden: true }));
  }
  if (tools) {
    tools.hidden = !on;
    if (!on) $("#class-more").hidden = true;
  }
}

function updateTrainControls(rows) {
  const names = (state.project.backbones || []).map((b) => (typeof b === "string" ? b : b.name));
  $("#train-backbones").textContent = names.length
    ? `Trains a classifier head on ${names.map((n) => TITLES[n] || n).join(", ")}, then ensembles them.`
    : "";
  renderWeightsWarning((state.project.backbone_status || []).filter((b) => !b.available).map((b) => ({
    backbone: b.name, title: b.title || TITLES[b.name] || b.name, file: b.weights_file, remedy: b.remedy, reason: b.reason })));
  const trainable = rows.filter((r) => r.train > 0);
  const running = state.job && !TERMINAL.has(state.job.state);
  const button = $("#train-btn");
  button.disabled = running || trainable.length < 2;
  button.textContent = state.iterations.length ? "Retrain" : "Train";
  $("#train-hint").textContent = trainable.length < 2
    ? "Add images of at least two classes to train."
    : running ? "Training in the background; you can keep using the page." : "Features are cached, so retraining after adding images is quick.";
}

/** The one place that says a backbone's weights are missing (before training, and when the
 * server refuses to train): the file and where to put it, per backbone. */
function renderWeightsWarning(missing, refused = false) {
  const warn = $("#train-warning");
  warn.hidden = !missing.length;
  fill(warn, missing.length ? [
    h("strong", { text: `${refused ? "Training refused: w" : "W"}eights missing for ${missing.map((m) => m.title || m.backbone).join(", ")}.` }),
    " Put each file where it says (then train again), or change the backbones to ones whose weights are here.",
    h("ul", null, missing.map((m) => h("li", { class: "missing-weights",
      text: m.file ? `${m.title || m.backbone}: ${m.file} — ${m.remedy || m.reason}` : `${m.title || m.backbone}: ${m.reason}` })))] : null);
}

async function loadProject() {
  const project = await api(base);
  state.project = project;
  learnTitles(project.backbone_status);
  renderHeader(project);
  const rows = renderClasses(project);
  updateTrainControls(rows);
  loadNearDuplicates();
  manager.refresh(project);
  if (document.activeElement !== $("#threshold")) $("#threshold").value = Math.round((project.threshold || 0) * 100);
  $("#fine-tune").checked = Boolean(project.fine_tune);
  return project;
}

/** The project's fine-tuning setting: saved on the project as soon as the box changes. */
function setupFineTune() {
  $("#fine-tune").addEventListener("change", async (event) => {
    const box = event.target;
    const status = $("#fine-tune-status");
    try {
      const project = await api(base, { method: "PATCH", json: { fine_tune: box.checked } });
      state.project.fine_tune = project.fine_tune;
      status.textContent = project.fine_tune ? "Saved: the next training also fine-tunes." : "Saved: frozen backbones only.";
    } catch (err) {
      box.checked = !box.checked;
      reportError(err);
    }
  });
}

/** The project's "not sure" threshold: saved on the project, used by every classification. */
function setupThreshold() {
  $("#threshold-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const status = $("#threshold-status");
    const percent = Number($("#threshold").value);
    if (!Number.isFinite(percent) || percent < 0 || percent > 99) {
      status.textContent = "Use a whole percentage from 0 (always answer) to 99.";
      return;
    }
    try {
      const project = await api(base, { method: "PATCH", json: { threshold: percent / 100 } });
      state.project.threshold = project.threshold;
      status.textContent = percent ? `Saved: below ${percent}% the answer is "not sure".` : "Saved: always answers.";
    } catch (err) {
      reportError(err);
    }
  });
}

/** One near-duplicate group: its thumbnails with class and split, and what is wrong with it. */
function nearDuplicateGroup(group) {
  const warnings = [
    group.straddles_splits ? "in both the training and the test set: test accuracy will look better than it is" : null,
    group.mixed_labels ? "labelled with different classes" : null,
  ].filter(Boolean);
  return h("li", { class: "near-dup-group" },
    warnings.length ? h("p", { class: "near-dup-warning", text: `Same picture ${warnings.join("; ")}.` }) : null,
    h("div", { class: "thumbs" }, group.images.map((im) =>
      thumb({ ...im, source: im.name }, `${im.label}${im.split === "test" ? " (test)" : ""}`))));
}

function nearDuplicateList(groups) {
  const risky = groups.filter((g) => g.straddles_splits || g.mixed_labels).length;
  return h("details", { class: "near-dups-list", open: risky > 0 },
    h("summary", { text: `${plural(groups.length, "group")} of near-duplicate images` +
      (risky ? ` (${risky} across the test set or classes)` : "") }),
    h("p", { class: "muted", text: "Resized, re-saved or lightly edited copies of one picture. Training keeps each group in one fold, so cross-validation is not inflated by them." }),
    h("ul", null, groups.map(nearDuplicateGroup)));
}

async function loadNearDuplicates() {
  const box = $("#near-dups");
  try {
    const { groups } = await api(`${base}/near-duplicates`);
    box.hidden = !groups.length;
    fill(box, groups.length ? nearDuplicateList(groups) : null);
  } catch (err) {
    reportError(err);
  }
}

// ---- choosing backbones --------------------------------------------------------------------

let allBackbones = null;

async function fillBackboneEditor() {
  const list = $("#backbone-edit-list");
  try {
    if (!allBackbones) {
      allBackbones = await api("/backbones");
      learnTitles(allBackbones);
    }
  } catch (err) {
    list.replaceChildren(h("p", { class: "muted", text: "Could not load the backbones." }));
    reportError(err);
    return;
  }
  const current = new Set((state.project.backbones || []).map((b) => (typeof b === "string" ? b : b.name)));
  list.replaceChildren(...allBackbones.map((b) => {
    const id = `edit-${b.name}`;
    return h("div", { class: `backbone-option${b.available ? "" : " unavailable"}` },
      h("input", { type: "checkbox", id, name: "backbones", value: b.name, checked: current.has(b.name),
        "aria-describedby": `${id}-status` }),
      h("label", { for: id }, h("span", { class: "backbone-title", text: b.title || TITLES[b.name] || b.name })),
      h("p", { id: `${id}-status`, class: `backbone-status ${b.available ? "ok" : "missing"}` },
        h("span", { class: "badge", text: b.available ? "available" : "weights missing" }),
        b.available ? null : h("span", { class: "reason", text: b.reason || "" })));
  }));
}

async function saveBackbones(event) {
  event.preventDefault();
  const names = [...document.querySelectorAll("#backbone-edit-list input:checked")].map((el) => el.value);
  if (!names.length) {
    showAlert("Choose at least one backbone.");
    return;
  }
  try {
    await api(base, { method: "PATCH", json: { backbones: names } });
    $("#backbone-edit").open = false;
    await loadProject();
    showAlert("Backbones saved; train to use them.", { kind: "success", timeout: 4000 });
  } catch (err) {
    reportError(err);
  }
}

// ---- uploads -------------------------------------------------------------------------------

function uploadReport(body, { what, split, when } = {}) {
  const rejected = body.rejected || [];
  const accepted = typeof body.accepted === "number" ? body.accepted : (body.accepted || []).length;
  const dups = Array.isArray(body.duplicates) ? body.duplicates : [];
  const nDups = typeof body.duplicates === "number" ? body.duplicates : dups.length;
  const files = body.files || [];
  const name = what || (files.length === 1 ? files[0].name : files.length ? plural(files.length, "file") : "Upload");
  const report = h("div", { class: `upload-report${rejected.length ? " has-rejects" : ""}` },
    h("p", { class: "upload-line" },
      h("strong", { text: name }), (split || body.split) === "test" ? " (test set)" : "", ": ",
      `${plural(accepted, "image")} added`,
      nDups ? ` · ${plural(nDups, "duplicate")} skipped` : "",
      rejected.length ? ` · ${rejected.length} rejected` : "",
      when ? h("span", { class: "muted", text: ` · ${new Date(when).toLocaleString()}` }) : null),
    rejected.length ? h("div", { class: "rejects", role: "alert" },
      h("h4", { text: `${plural(rejected.length, "file")} rejected` }),
      h("ul", null, rejected.map((r) => h("li", null,
        h("code", { class: "reject-name", text: r.name ?? r.source ?? r.path ?? "?" }), " — ",
        h("span", { class: "reject-reason", text: r.reason ?? r.error ?? "rejected" }))))) : null,
    (body.near_duplicates || []).length ? h("p", { class: "upload-near-dups", text:
      `${plural(body.near_duplicates.length, "near-duplicate group")} involve these images: see the list under Classes.` }) : null,
    dups.length ? h("details", { class: "dups" },
      h("summary", { text: `${plural(dups.length, "duplicate")} skipped (already in the project)` }),
      h("ul", null, dups.map((d) => h("li", null,
        h("code", { text: d.name ?? "?" }), " — ", h("span", { text: d.reason ?? "duplicate" }))))) : null,
    h("button", { type: "button", class: "alert-close", "aria-label": "Dismiss", text: "×",
      onclick: () => report.remove() }));
  return report;
}

/** Earlier uploads' reports (kept by the server), so rejects stay visible after a reload. */
async function loadUploadHistory() {
  try {
    const uploads = await api(`${base}/uploads`);
    const box = $("#upload-results");
    for (const u of (uploads || []).slice(0, 5)) {
      if (!(u.rejected || []).length) continue;
      box.append(uploadReport(u, { when: u.created_at }));
    }
  } catch (err) {
    if (err.status !== 404) reportError(err);
  }
}

let uploadQueue = Promise.resolve();
let pendingUploads = 0;

/** Uploads run one after another; files dropped meanwhile wait their turn. */
function sendFiles(files, split) {
  // Read the class name now: the user may type another one for the next drop.
  const label = $(split === "test" ? "#test-label" : "#train-label").value.trim();
  if (pendingUploads) showAlert("Queued after the upload in progress.", { kind: "info", timeout: 3000 });
  pendingUploads += 1;
  uploadQueue = uploadQueue.then(() => sendNow(files, split, label)).finally(() => { pendingUploads -= 1; });
  return uploadQueue;
}

async function sendNow(files, split, label) {
  const form = new FormData();
  for (const f of files) form.append("file", f, f.name);
  if (label) form.append("label", label);
  form.append("split", split);

  const status = $("#upload-status");
  const bar = $("#upload-progress");
  const text = $("#upload-text");
  const total = files.reduce((a, f) => a + f.size, 0);
  status.hidden = false;
  status.classList.remove("done", "failed");
  bar.value = 0;
  text.textContent = `Uploading ${files.length === 1 ? files[0].name : plural(files.length, "file")} (${(total / 1e6).toFixed(1)} MB)…`;
  try {
    const body = await upload(`${base}/images`, form, (fraction) => {
      bar.value = Math.round(100 * fraction);
      if (fraction >= 1) text.textContent = "Checking images…";
    });
    bar.value = 100;
    text.textContent = "Upload complete.";
    status.classList.add("done");
    const what = files.length === 1 ? files[0].name : plural(files.length, "file");
    $("#upload-results").prepend(uploadReport(body || {}, { what, split }));
    await loadProject();
  } catch (err) {
    text.textContent = "Upload failed.";
    status.classList.add("failed");
    if (err.body && Array.isArray(err.body.rejected)) {
      // Nothing accepted: the server still reports every file with its reason.
      const what = files.length === 1 ? files[0].name : plural(files.length, "file");
      $("#upload-results").prepend(uploadReport(err.body, { what, split }));
      showAlert(`No image was accepted from ${what}.`);
    } else {
      reportError(err);
    }
  }
}

// ---- training ------------------------------------------------------------------------------

function jobFraction(job) {
  const p = job.progress;
  if (p == null) return job.state === "succeeded" ? 1 : 0;
  if (typeof p === "object") return p.fraction ?? (p.total ? p.done / p.total : 0);
  return p > 1 ? p / 100 : p;
}

const clock = new ProgressClock();
const nowSeconds = () => performance.now() / 1000;
const lastLine = { key: null, since: 0, job: null }; // the status line as last drawn, since when, of which job
let ticker = null;

/** The status line of a running job (stage, done/total, ETA, and seconds in the stage once
 * nothing has changed for 2 s), redrawn every half second between polls. */
function drawRunning() {
  const job = lastLine.job;
  if (!job || TERMINAL.has(job.state)) return;
  const now = nowSeconds();
  const percent = `${Math.round(100 * Math.max(0, Math.min(1, jobFraction(job))))}%`;
  let stage = job.stage || "waiting for the worker";
  let extra = "";
  if (job.state === "running") {
    ({ stage, extra } = progressParts(job, clock, now));
    const key = `${stage}|${extra}|${percent}`;
    if (key !== lastLine.key) {
      lastLine.key = key;
      lastLine.since = now;
    }
    ({ extra } = progressParts(job, clock, now, { textStillFor: now - lastLine.since }));
  } else if (clock.stageElapsed(now) > 2) {
    extra = `waiting ${formatElapsed(clock.stageElapsed(now))}`;
  }
  // The stage is announced to screen readers when it changes; the ticking part is not.
  if ($("#job-stage").textContent !== stage) $("#job-stage").textContent = stage;
  $("#job-eta").textContent = extra ? `· ${extra}` : "";
  $("#job-percent").textContent = percent;
}

function renderJob(job) {
  const box = $("#job");
  box.hidden = false;
  box.dataset.state = job.state;
  const fraction = Math.max(0, Math.min(1, jobFraction(job)));
  const stateLabel = { queued: "Queued", running: "Training", succeeded: "Done", failed: "Failed", cancelled: "Cancelled" }[job.state] || job.state;
  $("#job-state").textContent = stateLabel;
  $("#job-state").className = `badge badge-${job.state}`;
  $("#job-progress").value = Math.round(100 * fraction);
  $("#cancel-btn").hidden = TERMINAL.has(job.state);
  lastLine.job = job;
  if (!TERMINAL.has(job.state)) {
    clock.observe(job.state === "running" ? fraction : 0, `${job.state}:${job.stage || ""}`, nowSeconds());
    drawRunning();
    if (!ticker) ticker = setInterval(drawRunning, 500);
    return;
  }
  clearInterval(ticker);
  ticker = null;
  clock.reset();
  let stage = job.stage || "";
  if (job.state === "succeeded") stage = job.iteration ? `Finished: iteration ${job.iteration}` : "Finished";
  if (job.state === "failed") stage = job.error || "Training failed.";
  if (job.state === "cancelled") stage = "Training was cancelled.";
  $("#job-stage").textContent = stage;
  $("#job-eta").textContent = "";
  $("#job-percent").textContent = job.state === "failed" || job.state === "cancelled" ? "" : `${Math.round(100 * fraction)}%`;
}

async function pollJob(jobId) {
  clearTimeout(state.pollTimer);
  let job;
  try {
    job = await api(`/jobs/${encodeURIComponent(jobId)}`);
  } catch (err) {
    if (!state.pollFailing) reportError(err); // once, not every retry
    state.pollFailing = true;
    state.pollTimer = setTimeout(() => pollJob(jobId), 3000);
    return;
  }
  state.pollFailing = false;
  job.id = job.id ?? jobId;
  const was = state.job && state.job.state;
  state.job = job;
  renderJob(job);
  if (!TERMINAL.has(job.state)) {
    updateTrainControls(classRows(state.project));
    state.pollTimer = setTimeout(() => pollJob(jobId), 1000);
    return;
  }
  updateTrainControls(classRows(state.project));
  if (was && !TERMINAL.has(was)) {
    if (job.state === "succeeded") {
      showAlert("Training finished.", { kind: "success", timeout: 6000 });
      await loadIterations(true);
    } else if (job.state === "failed") {
      showAlert(`Training failed: ${job.error || "unknown error"}`);
    }
  }
}

async function startTraining() {
  const button = $("#train-btn");
  button.disabled = true;
  clearTimeout(state.pollTimer);
  state.job = null;
  renderJob({ state: "queued", progress: 0, stage: "starting…" });
  $("#cancel-btn").disabled = true; // until the server has said which job it is
  try {
    const body = await api(`${base}/train`, { method: "POST", json: {} });
    if (body.nothing_changed) {
      $("#job").hidden = true;
      const number = body.iteration && body.iteration.number;
      showAlert(`Nothing changed since iteration ${number ?? "the latest"}: same images, labels, backbones and settings, so its results stand.`,
        { kind: "success", timeout: 8000 });
      updateTrainControls(classRows(state.project));
      return;
    }
    const jobId = body.job_id ?? body.id;
    if ((body.warnings || []).length) showAlert("Some backbones' weights are missing:", { kind: "warn", details: body.warnings });
    state.job = { ...body, id: jobId, state: body.state || "queued", progress: body.progress || 0 };
    renderJob(state.job);
    $("#cancel-btn").disabled = false;
    updateTrainControls(classRows(state.project));
    pollJob(jobId);
  } catch (err) {
    $("#job").hidden = true;
    lastLine.job = null; // nothing to tick for
    if (err.status === 422 && err.body && Array.isArray(err.body.weights_missing)) {
      // Refused before queuing: said once, in the weights notice above the job box.
      updateTrainControls(classRows(state.project));
      renderWeightsWarning(err.body.weights_missing, true);
      $("#train-warning").scrollIntoView({ block: "nearest" });
      return;
    }
    reportError(err);
    if (err.status === 409 && err.body && err.body.job) {
      // Already training (another tab?): follow that job.
      state.job = { ...err.body.job, state: "running" };
      pollJob(err.body.job.id);
    }
    updateTrainControls(classRows(state.project));
  }
}

async function cancelTraining() {
  if (!state.job) return;
  const button = $("#cancel-btn");
  button.disabled = true;
  try {
    await api(`/jobs/${encodeURIComponent(state.job.id)}/cancel`, { method: "POST" });
    pollJob(state.job.id);
  } catch (err) {
    reportError(err);
  } finally {
    button.disabled = false;
  }
}

// ---- results -------------------------------------------------------------------------------

const iterationNumber = (it) => (typeof it === "number" ? it : it.iteration ?? it.number ?? it.id);

function openImages(modelTitle, heading, predictions, sourceTitle) {
  const panel = $("#cell-detail");
  panel.hidden = false;
  panel.replaceChildren(
    h("header", { class: "detail-head" },
      h("h3", null, h("span", { class: "muted", text: `${modelTitle}${sourceTitle ? ` · ${sourceTitle}` : ""} · ` }), heading),
      h("button", { type: "button", class: "alert-close", "aria-label": "Close", text: "×",
        onclick: () => { panel.hidden = true; document.querySelectorAll(".cell.selected").forEach((c) => c.classList.remove("selected")); } })),
    predictions.length
      ? h("div", { class: "thumb-grid" }, predictions.map((p) => thumb(p, h("span", null,
        h("span", { class: "thumb-name", text: p.source || p.sha256.slice(0, 12) }),
        h("span", { class: `thumb-labels ${p.true === p.pred ? "ok" : "wrong"}` },
          p.true === p.pred ? `${p.pred} (${pct(p.score, 0)})` : `${p.true} → ${p.pred} (${pct(p.score, 0)})`)))))
      : h("p", { class: "muted", text: "No images in this cell." }));
  panel.scrollIntoView({ block: "nearest", behavior: "smooth" });
}

const ctx = {
  openCell(modelTitle, entry, cell) {
    document.querySelectorAll(".cell.selected").forEach((c) => c.classList.remove("selected"));
    if (cell.button) cell.button.classList.add("selected");
    const images = cellImages(entry, cell);
    const heading = cell.trueLabel === cell.predLabel
      ? `${cell.trueLabel} correctly classified: ${plural(images.length, "image")}`
      : `true ${cell.trueLabel} → predicted ${cell.predLabel}: ${plural(images.length, "image")}`;
    openImages(modelTitle, heading, images, SOURCE_TITLES[cell.source] || cell.source);
  },
  openImages(modelTitle, heading, predictions) {
    openImages(modelTitle, heading, predictions);
  },
};

async function loadResults(iteration) {
  const container = $("#results");
  container.setAttribute("aria-busy", "true");
  try {
    const query = iteration != null ? `?iteration=${encodeURIComponent(iteration)}` : "";
    const report = await api(`${base}/results${query}`);
    state.iteration = report.iteration ?? iteration;
    $("#cell-detail").hidden = true;
    renderResults(container, report, ctx);
    performance.mark("results-rendered"); // how long a big report takes to draw (tests/test_ui_app.py)
    state.live = report.live_iteration ?? null;
    showLive({ shown: state.iteration, live: state.live, published: report.published_iteration ?? null });
    setClassifyEnabled(true);
  } catch (err) {
    if (err.status === 404) {
      container.replaceChildren(h("p", { class: "muted", text: "Train the project to see how well each backbone does." }));
    } else {
      reportError(err);
    }
  } finally {
    container.removeAttribute("aria-busy");
  }
}

async function loadIterations(showLatest) {
  try {
    const body = await api(`${base}/iterations`);
    state.iterations = Array.isArray(body) ? body : body.iterations || [];
  } catch (err) {
    if (err.status !== 404) reportError(err);
    state.iterations = [];
  }
  const field = $("#iteration-field");
  const select = $("#iteration");
  const numbers = state.iterations.map(iterationNumber).filter((n) => n != null).sort((a, b) => b - a);
  field.hidden = numbers.length === 0;
  select.replaceChildren(...numbers.map((n, i) => {
    const it = state.iterations.find((x) => iterationNumber(x) === n);
    const when = it && (it.created_at || it.finished_at);
    const acc = it && (it.cv_accuracy ?? (it.ensemble && it.ensemble.cv_accuracy));
    const bits = [`Iteration ${n}`];
    if (i === 0) bits.push("latest");
    if (it && it.live) bits.push("live");
    if (acc != null) bits.push(`CV ${pct(acc)}`);
    if (when) bits.push(new Date(when).toLocaleString());
    return h("option", { value: String(n), text: bits.join(" · ") });
  }));
  updateTrainControls(classRows(state.project));
  if (!numbers.length) {
    setClassifyEnabled(false);
    return;
  }
  if (showLatest || state.iteration == null || !numbers.includes(state.iteration)) state.iteration = numbers[0];
  select.value = String(state.iteration);
  await loadResults(state.iteration);
}

// ---- classify ------------------------------------------------------------------------------

let classifyZone;
let camera; // static/js/webcam.js: live classification and captures
let manager; // static/js/manage.js: rename/delete the project, change images and classes
let lastObjectUrl = null;

function setClassifyEnabled(on) {
  classifyZone.setEnabled(on);
  camera.setTrained(on);
  $("#classify-hint").textContent = on
    ? `Uses iteration ${state.live ?? Math.max(...state.iterations.map(iterationNumber))} (the live one).`
    : "Train the project first.";
}

async function classify(files) {
  if (isBatch(files)) return runBatch(base, files, { titles: TITLES, onLabelled: () => loadProject().catch(reportError) });
  const file = files.find((f) => !f.type || f.type.startsWith("image/")) || files[0];
  if (files.length > 1) showAlert("Classifying the first image only.", { kind: "info", timeout: 4000 });
  const busy = $("#classify-busy");
  const out = $("#classify-result");
  if (lastObjectUrl) URL.revokeObjectURL(lastObjectUrl);
  lastObjectUrl = URL.createObjectURL(file);
  busy.hidden = false;
  out.replaceChildren(h("figure", { class: "prediction-image pending" }, h("img", { src: lastObjectUrl, alt: `Image ${file.name}` })));
  const form = new FormData();
  form.append("file", file, file.name);
  try {
    const body = await api(`${base}/predict`, { method: "POST", form });
    const answer = Array.isArray(body.results) ? body.results[0] : body;
    renderPrediction(out, answer, { imageUrl: lastObjectUrl, fileName: file.name, titles: TITLES,
      explain: { url: `${base}/explain`, file } });
  } catch (err) {
    out.replaceChildren();
    reportError(err);
  } finally {
    busy.hidden = true;
  }
}

// ---- start ---------------------------------------------------------------------------------

async function main() {
  dropzone($("#train-drop"), (files) => sendFiles(files, "train"));
  dropzone($("#test-drop"), (files) => sendFiles(files, "test"));
  classifyZone = dropzone($("#classify-drop"), classify, { folders: true });
  classifyZone.setEnabled(false);
  manager = manage({ base, actionsRoot: $("#project-actions"), panelRoot: $("#manage"),
    onChanged: () => loadProject().catch(reportError) });
  camera = webcam($("#camera"), { base, titles: TITLES, onCaptured: () => loadProject().catch(reportError) });
  $("#train-btn").addEventListener("click", startTraining);
  $("#backbone-edit").addEventListener("toggle", (e) => { if (e.target.open) fillBackboneEditor(); });
  $("#backbone-form").addEventListener("submit", saveBackbones);
  $("#cancel-btn").addEventListener("click", cancelTraining);
  setupThreshold();
  setupFineTune();
  $("#iteration").addEventListener("change", (e) => loadResults(Number(e.target.value)));
  setupPublish(base, { current: () => state.iteration, onPublished: () => loadIterations(false) });
  document.addEventListener("images-changed", () => loadProject().catch(reportError)); // curation.js

  let project;
  try {
    project = await loadProject();
  } catch (err) {
    reportError(err);
    if (err.status === 404) $("#project-title").textContent = "Project not found";
    return;
  }
  const job = project.latest_job || project.job;
  if (job && (job.id ?? job.job_id) != null) {
    state.job = { ...job, id: job.id ?? job.job_id };
    if (!TERMINAL.has(job.state)) {
      renderJob(state.job);
      state.job = { ...state.job, state: "running" }; // so the finish is noticed and results load
      updateTrainControls(classRows(project));
      pollJob(state.job.id);
    } else if (job.state === "failed") {
      renderJob(state.job);
    }
  }
  await Promise.all([loadIterations(true), loadUploadHistory()]);
}

main();
