// Batch prediction on "Test your model": a zip or many files go to predict as one background
// job (POST …/predict answers 202); its progress with an ETA as training's; then a table of
// every image with each backbone's answer and the ensemble's, sortable and filterable by label
// and confidence, CSV/JSON downloads, the rejects with their reasons and, when the zip had class
// folders, the accuracy and confusion matrix of this extra evaluation.
import { api, reportError, showAlert, upload } from "./api.js";
import { $, fill, h, pct, plural } from "./dom.js";
import { ProgressClock, progressText } from "./progress.js";

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const POLL_MS = 700;

const isZip = (f) => /\.zip$/i.test(f.name) || /zip/.test(f.type || "");

/** Whether dropped files make a batch: several files, or a zip. */
export function isBatch(files) {
  return files.length > 1 || (files.length === 1 && isZip(files[0]));
}

let current = null; // {jobId, timer}: the batch being followed

/** Send `files` to `${base}/predict` as a batch and follow it in #batch. */
export async function runBatch(base, files, { titles = {} } = {}) {
  if (current) clearTimeout(current.timer);
  const box = $("#batch");
  box.hidden = false;
  const stage = h("span", { class: "batch-stage", "aria-live": "polite" });
  const bar = h("progress", { class: "batch-progress", max: 100, value: 0, "aria-label": "Batch progress" });
  const cancel = h("button", { type: "button", class: "btn btn-small batch-cancel", text: "Cancel", hidden: true });
  const out = h("div", { class: "batch-result" });
  fill(box, h("div", { class: "batch-head" }, stage, cancel), bar, out);
  const what = files.length === 1 ? files[0].name : plural(files.length, "file");
  stage.textContent = `Uploading ${what}…`;
  const form = new FormData();
  for (const f of files) form.append("file", f, f.name);
  let body;
  try {
    body = await upload(`${base}/predict`, form, (fraction) => {
      bar.value = Math.round(10 * fraction); // the upload is the first tenth of the bar
    });
  } catch (err) {
    stage.textContent = "The batch could not be sent.";
    reportError(err);
    return;
  }
  const jobId = body.job_id;
  const me = { jobId, timer: null };
  current = me;
  cancel.hidden = false;
  cancel.onclick = async () => {
    cancel.disabled = true;
    try { await api(`/jobs/${encodeURIComponent(jobId)}/cancel`, { method: "POST" }); } catch (err) { reportError(err); }
  };
  const clock = new ProgressClock();
  const poll = async () => {
    if (current !== me) return; // another batch replaced this one
    let batch;
    try {
      batch = await api(`/batches/${encodeURIComponent(jobId)}`);
    } catch (err) {
      reportError(err);
      me.timer = setTimeout(poll, 3 * POLL_MS);
      return;
    }
    const job = batch.job;
    if (!TERMINAL.has(job.state)) {
      clock.observe(job.state === "running" ? job.progress : 0, `${job.state}:${job.stage}`, performance.now() / 1000);
      bar.value = 10 + Math.round(90 * (job.progress || 0));
      stage.textContent = job.state === "queued"
        ? `Queued: ${job.worker_alive === false ? "no worker is running" : "waiting for a worker"}`
        : `Classifying ${what} with iteration ${batch.iteration}: ${progressText(job, clock, performance.now() / 1000)}`;
      me.timer = setTimeout(poll, POLL_MS);
      return;
    }
    cancel.hidden = true;
    bar.value = job.state === "succeeded" ? 100 : bar.value;
    if (job.state === "succeeded") {
      stage.textContent = `${what}: ${plural(batch.n_images, "image")} classified with iteration ${batch.iteration}`;
      fill(out, renderBatch(batch, titles));
    } else {
      stage.textContent = job.state === "failed" ? `The batch failed: ${job.error || "unknown error"}` : "The batch was cancelled.";
      if (job.state === "failed") showAlert(stage.textContent);
    }
  };
  poll();
}

// ---- the finished batch ----------------------------------------------------------------------

function confusionTable(confusion) {
  const { labels, matrix } = confusion;
  return h("div", { class: "table-scroll" }, h("table", { class: "batch-confusion" },
    h("caption", { text: "Confusion matrix of the ensemble (rows: true class, columns: predicted)" }),
    h("thead", null, h("tr", null, h("th", { scope: "col", text: "true \\ predicted" }),
      labels.map((l) => h("th", { scope: "col", text: l })))),
    h("tbody", null, matrix.map((row, i) => h("tr", null, h("th", { scope: "row", text: labels[i] }),
      row.map((n, j) => h("td", { class: n ? (i === j ? "hit" : "miss") : "zero", text: String(n) })))))));
}

function evaluationBlock(batch, titles) {
  const ev = batch.evaluation;
  if (!ev) return null;
  const perBackbone = Object.entries(ev.backbones || {}).map(([n, e]) => `${titles[n] || n} ${pct(e.accuracy)}`).join(" · ");
  return h("section", { class: "batch-evaluation", "aria-label": "Evaluation on the labelled images" },
    h("p", { class: "batch-accuracy" },
      h("strong", { text: `Accuracy ${pct(ev.accuracy)}` }),
      ` on ${plural(ev.n, "labelled image")} (their class folders)`,
      perBackbone ? h("span", { class: "muted", text: ` · ${perBackbone}` }) : null),
    confusionTable(ev.confusion));
}

const COLUMNS = [
  { key: "name", title: "Image", value: (r) => r.name },
  { key: "label", title: "True label", value: (r) => r.label ?? "", labelled: true },
  { key: "prediction", title: "Ensemble", value: (r) => r.prediction },
  { key: "score", title: "Confidence", value: (r) => r.score, numeric: true },
];

/** The table of every image, with its sort and filters. */
function resultTable(batch, titles) {
  const rows = batch.images || [];
  const labelled = batch.labelled > 0;
  const backbones = batch.backbones || [];
  const columns = [...COLUMNS.filter((c) => !c.labelled || labelled),
    ...backbones.map((b) => ({ key: `bb:${b}`, title: titles[b] || b, value: (r) => r.backbones[b].label }))];
  const sort = { key: "name", dir: 1 };
  const filter = { prediction: "", label: "", min: 0, mistakes: false };
  const tbody = h("tbody", null);
  const status = h("span", { class: "batch-count muted", "aria-live": "polite" });
  const headers = columns.map((c) => h("th", { scope: "col", dataset: { key: c.key } },
    h("button", { type: "button", class: "sort", text: c.title, onclick: () => {
      sort.dir = sort.key === c.key ? -sort.dir : (c.numeric ? -1 : 1);
      sort.key = c.key;
      draw();
    } })));

  const row = (r) => h("tr", { class: r.correct === false ? "wrong" : r.correct ? "right" : null },
    columns.map((c) => {
      if (c.key === "name") return h("td", { class: "batch-name", title: r.duplicate_of ? `same image as ${r.duplicate_of}` : r.name, text: r.name });
      if (c.key === "score") return h("td", { class: "num", text: pct(r.score) });
      if (c.key.startsWith("bb:")) {
        const answer = r.backbones[c.key.slice(3)];
        return h("td", { text: `${answer.label} (${pct(answer.score, 0)})` });
      }
      return h("td", { text: c.value(r) || "–" });
    }));

  function draw() {
    const column = columns.find((c) => c.key === sort.key);
    const shown = rows.filter((r) => (!filter.prediction || r.prediction === filter.prediction)
      && (!filter.label || r.label === filter.label)
      && r.score * 100 >= filter.min
      && (!filter.mistakes || r.correct === false));
    shown.sort((a, b) => {
      const x = column.value(a);
      const y = column.value(b);
      return sort.dir * (column.numeric ? x - y : String(x).localeCompare(String(y)));
    });
    tbody.replaceChildren(...shown.map(row));
    for (const th of headers) {
      th.setAttribute("aria-sort", th.dataset.key === sort.key ? (sort.dir > 0 ? "ascending" : "descending") : "none");
    }
    status.textContent = shown.length === rows.length ? plural(rows.length, "image") : `${shown.length} of ${plural(rows.length, "image")}`;
  }

  const answers = [...new Set(rows.map((r) => r.prediction))].sort();
  const choice = (label, key, values) => h("label", { class: "field-inline" }, label,
    h("select", { class: `batch-filter-${key}`, onchange: (e) => { filter[key] = e.target.value; draw(); } },
      h("option", { value: "", text: "all" }), values.map((v) => h("option", { value: v, text: v }))));
  const tools = h("div", { class: "batch-tools" },
    choice("Answer", "prediction", answers),
    labelled ? choice("True label", "label", batch.classes || []) : null,
    h("label", { class: "field-inline" }, "Confidence at least",
      h("input", { type: "number", class: "batch-filter-min", min: 0, max: 100, step: 1, value: 0, inputmode: "numeric",
        oninput: (e) => { filter.min = Number(e.target.value) || 0; draw(); } }), "%"),
    labelled ? h("label", { class: "field-inline" },
      h("input", { type: "checkbox", class: "batch-filter-mistakes", onchange: (e) => { filter.mistakes = e.target.checked; draw(); } }),
      "Only mistakes") : null,
    status);
  draw();
  return h("div", { class: "batch-table-box" }, tools,
    h("div", { class: "table-scroll batch-scroll" }, h("table", { class: "batch-table" },
      h("caption", { class: "visually-hidden", text: "Every image of the batch with its answers" }),
      h("thead", null, h("tr", null, headers)), tbody)));
}

function renderBatch(batch, titles) {
  const timing = batch.timing || {};
  const rejected = batch.rejected || [];
  return [
    h("p", { class: "batch-summary" },
      `${plural(batch.n_images, "image")} classified`,
      rejected.length ? ` · ${rejected.length} rejected` : "",
      timing.images_per_second ? h("span", { class: "muted", text: ` · ${timing.images_per_second} images/s in the forward passes` }) : null,
      " · Download ",
      h("a", { href: batch.downloads.csv, download: "", class: "batch-csv", text: "CSV" }), " or ",
      h("a", { href: batch.downloads.json, download: "", class: "batch-json", text: "JSON" })),
    evaluationBlock(batch, titles),
    rejected.length ? h("details", { class: "batch-rejects", open: true },
      h("summary", { text: `${plural(rejected.length, "file")} rejected` }),
      h("ul", null, rejected.map((r) => h("li", null,
        h("code", { class: "reject-name", text: r.name }), " — ", h("span", { class: "reject-reason", text: r.reason }))))) : null,
    resultTable(batch, titles),
  ];
}
