// Results: backbones side by side with the ensemble, per-class tables, confusion heatmaps
// whose cells open the images behind them, and the misclassified images.
import { thumbnailUrl } from "./api.js";
import { curationPanels } from "./curation.js";
import { fill, h, pct, plural, seconds } from "./dom.js";
import { exportControl } from "./exports.js";

/** Display names of the backbones; pages add what the API says (`title`) with learnTitles. */
export const TITLES = { resnet50: "ResNet50", vgg16: "VGG16", xception: "Xception", efficientnet_lite0: "EfficientNet-Lite0",
  efficientnet_lite1: "EfficientNet-Lite1", efficientnet_lite2: "EfficientNet-Lite2" };

export function learnTitles(backbones) {
  for (const b of backbones || []) if (b && b.name && b.title) TITLES[b.name] = b.title;
}
const SOURCE_TITLES = { test: "test set", cv: "cross-validation", train: "training set" };
const title = (name) => TITLES[name] || name;

// ---- heatmap -------------------------------------------------------------------------------

function cellColour(count, rowTotal, diagonal) {
  if (!count) return { background: "var(--cell-empty)", color: "var(--muted)" };
  const share = rowTotal ? count / rowTotal : 0;
  const lightness = Math.round(95 - 55 * share);
  const hue = diagonal ? 222 : 4;
  const saturation = diagonal ? 70 : 78;
  return { background: `hsl(${hue} ${saturation}% ${lightness}%)`, color: lightness < 62 ? "#fff" : "#1b1f29" };
}

/**
 * A confusion matrix as a table of buttons (rows: true class, columns: predicted).
 * onCell({trueLabel, predLabel, count, source}) is called when a cell is clicked.
 */
export function heatmap(confusion, source, onCell, { caption } = {}) {
  const labels = confusion.labels || [];
  const matrix = confusionMatrix(confusion);
  const heading = caption || `Confusion matrix · ${SOURCE_TITLES[source] || source}`;
  const table = h("table", { class: `heatmap${labels.length <= 4 ? " heatmap-small" : ""}`, dataset: { source } },
    h("caption", { class: "visually-hidden", text: `${heading} (rows: true class, columns: predicted class)` }),
    h("thead", null, h("tr", null,
      h("th", { scope: "col", class: "corner" },
        h("span", { class: "axis axis-true", text: "true ↓" }), h("span", { class: "axis axis-pred", text: "predicted →" })),
      labels.map((label) => h("th", { scope: "col", class: "col-label", title: label }, h("span", { text: label }))))),
    h("tbody", null, labels.map((trueLabel, i) => {
      const row = matrix[i] || [];
      const total = row.reduce((a, b) => a + b, 0);
      return h("tr", null,
        h("th", { scope: "row", class: "row-label", title: trueLabel, text: trueLabel }),
        labels.map((predLabel, j) => {
          const count = row[j] || 0;
          const diagonal = i === j;
          return h("td", { class: diagonal ? "diag" : "off" },
            h("button", {
              type: "button", class: "cell", style: cellColour(count, total, diagonal),
              dataset: { true: trueLabel, pred: predLabel, count: String(count) },
              "aria-label": `${plural(count, "image")} of ${trueLabel} predicted as ${predLabel}`,
              title: `true ${trueLabel} → predicted ${predLabel}: ${count}`,
              text: String(count),
              onclick: (e) => onCell({ trueLabel, predLabel, count, source, button: e.currentTarget }),
            }));
        }));
    })));
  return h("figure", { class: "heatmap-figure" },
    h("figcaption", { class: "heatmap-title", text: heading }),
    h("div", { class: "heatmap-wrap" }, table));
}

/** Beyond this many classes a matrix is collapsed by default and drawn on a canvas. */
export const MANY_CLASSES = 30;

function canvasColour(count, rowTotal, diagonal) {
  if (!count) return "#f3f4f7";
  const share = rowTotal ? count / rowTotal : 0;
  const lightness = Math.round(95 - 55 * share);
  return diagonal ? `hsl(222, 70%, ${lightness}%)` : `hsl(4, 78%, ${lightness}%)`;
}

/**
 * A big confusion matrix drawn on one canvas (one element however many classes); a click
 * on a cell calls onCell like the table's buttons do, hovering names the cell.
 */
export function heatmapCanvas(confusion, source, onCell, { caption } = {}) {
  const labels = confusion.labels || [];
  const matrix = confusionMatrix(confusion);
  const n = labels.length;
  const cell = Math.max(4, Math.min(14, Math.floor(900 / Math.max(n, 1)))); // scrolls beyond 225 classes
  const size = cell * n;
  const canvas = h("canvas", { class: "heatmap-canvas", width: size, height: size, tabindex: "0",
    dataset: { source, cell: String(cell), classes: String(n) },
    role: "img", "aria-label": `${caption} (${n} × ${n}; rows: true class, columns: predicted class): arrow keys move between cells, Enter shows a cell's images` });
  const ctx2d = canvas.getContext("2d");
  const totals = matrix.map((row) => (row || []).reduce((a, b) => a + b, 0));
  const paint = (i, j) => {
    ctx2d.fillStyle = canvasColour((matrix[i] || [])[j] || 0, totals[i], i === j);
    ctx2d.fillRect(j * cell, i * cell, cell, cell);
  };
  if (ctx2d) for (let i = 0; i < n; i += 1) for (let j = 0; j < n; j += 1) paint(i, j);
  const name = (i, j) => `true ${labels[i]} → predicted ${labels[j]}: ${(matrix[i] || [])[j] || 0}`;
  const status = h("p", { class: "heatmap-cursor muted", "aria-live": "polite" });
  const open = (i, j) => onCell({ trueLabel: labels[i], predLabel: labels[j], count: (matrix[i] || [])[j] || 0, source, button: null });
  // Keyboard: arrow keys move a cursor over the cells (Home/End: the row's ends), Enter opens one.
  let cursor = null;
  const moveTo = (i, j) => {
    if (!ctx2d || !n) return;
    if (cursor) paint(cursor.i, cursor.j);
    cursor = { i: Math.max(0, Math.min(n - 1, i)), j: Math.max(0, Math.min(n - 1, j)) };
    ctx2d.strokeStyle = "#111";
    ctx2d.lineWidth = 1;
    ctx2d.strokeRect(cursor.j * cell + 0.5, cursor.i * cell + 0.5, cell - 1, cell - 1);
    status.textContent = name(cursor.i, cursor.j);
  };
  canvas.addEventListener("keydown", (event) => {
    const { i = 0, j = 0 } = cursor || {};
    const moves = { ArrowUp: [i - 1, j], ArrowDown: [i + 1, j], ArrowLeft: [i, j - 1], ArrowRight: [i, j + 1], Home: [i, 0], End: [i, n - 1] };
    if (moves[event.key]) {
      event.preventDefault();
      moveTo(...(cursor ? moves[event.key] : [0, 0]));
    } else if ((event.key === "Enter" || event.key === " ") && cursor) {
      event.preventDefault();
      open(cursor.i, cursor.j);
    }
  });
  const at = (event) => {
    const box = canvas.getBoundingClientRect(); // less any border: the drawing is the content box
    const scale = canvas.clientWidth ? size / canvas.clientWidth : 1;
    const i = Math.floor(((event.clientY - box.top - canvas.clientTop) * scale) / cell);
    const j = Math.floor(((event.clientX - box.left - canvas.clientLeft) * scale) / cell);
    return i >= 0 && j >= 0 && i < n && j < n ? { i, j } : null;
  };
  canvas.addEventListener("mousemove", (event) => {
    const c = at(event);
    canvas.title = c ? name(c.i, c.j) : "";
  });
  canvas.addEventListener("click", (event) => {
    const c = at(event);
    if (c) open(c.i, c.j);
  });
  return h("figure", { class: "heatmap-figure heatmap-big" },
    h("figcaption", { class: "heatmap-title", text: `${caption} · ${n} × ${n}, rows true, columns predicted; hover a cell to name it, click it (or use the arrow keys and Enter) for its images` }),
    h("div", { class: "heatmap-wrap" }, canvas), status);
}

/**
 * A confusion's matrix as rows of counts: `matrix` as written, or built from `cells`
 * ([[true index, predicted index, count], ...], the non-zero cells only), the form
 * models/training.py writes beyond 30 classes to keep a many-class report small.
 */
export function confusionMatrix(confusion) {
  if (confusion.matrix) return confusion.matrix;
  const n = (confusion.labels || []).length;
  const matrix = Array.from({ length: n }, () => new Array(n).fill(0));
  for (const [i, j, count] of confusion.cells || []) if (i < n && j < n) matrix[i][j] = count;
  return matrix;
}

/** The off-diagonal cells of a confusion matrix, biggest first: [{trueLabel, predLabel, count}]. */
export function topConfusions(confusion, limit = 10) {
  const labels = confusion.labels || [];
  const out = [];
  confusionMatrix(confusion).forEach((row, i) => (row || []).forEach((count, j) => {
    if (i !== j && count > 0) out.push({ trueLabel: labels[i], predLabel: labels[j], count });
  }));
  out.sort((a, b) => b.count - a.count || a.trueLabel.localeCompare(b.trueLabel) || a.predLabel.localeCompare(b.predLabel));
  return out.slice(0, limit);
}

function topConfusionList(confusion, source, onCell, limit = 10) {
  const top = topConfusions(confusion, limit);
  const box = h("div", { class: "top-confusions", dataset: { source } },
    h("h4", null, "Top confusions", h("span", { class: "muted", text: ` · ${SOURCE_TITLES[source] || source}` })));
  if (!top.length) {
    box.append(h("p", { class: "muted", text: "None: no image was mistaken for another class." }));
    return box;
  }
  box.append(h("ol", { class: "confusion-list" }, top.map((c) => h("li", null,
    h("button", { type: "button", class: "confusion-pair", dataset: { true: c.trueLabel, pred: c.predLabel, count: String(c.count) },
      "aria-label": `${plural(c.count, "image")} of ${c.trueLabel} predicted as ${c.predLabel}`,
      onclick: (e) => onCell({ ...c, source, button: e.currentTarget }) },
    h("span", { class: "true-label", text: c.trueLabel }), " → ",
    h("span", { class: "pred-label", text: c.predLabel }),
    h("span", { class: "confusion-count", text: String(c.count) }))))));
  return box;
}

/**
 * A confusion matrix: up to MANY_CLASSES classes a table of buttons (shown, or in a closed
 * <details> when `collapsed`); beyond, a canvas built only when its <details> is first opened.
 */
function confusionBlock(confusion, source, onCell, { caption, summary, collapsed = false } = {}) {
  const n = (confusion.labels || []).length;
  if (n <= MANY_CLASSES && !collapsed) return heatmap(confusion, source, onCell, { caption });
  const build = () => (n <= MANY_CLASSES ? heatmap(confusion, source, onCell, { caption }) : heatmapCanvas(confusion, source, onCell, { caption }));
  const details = h("details", { class: "more heatmap-details", dataset: { source, classes: String(n) } },
    h("summary", { text: summary || `${caption} (${n} × ${n})` }));
  if (n <= MANY_CLASSES) details.append(build());
  else {
    details.addEventListener("toggle", () => {
      if (details.open && !details.querySelector(".heatmap-figure")) details.append(build());
    });
  }
  return details;
}

// ---- reliability ---------------------------------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";
function svgEl(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v != null) el.setAttribute(k, String(v));
  for (const c of children.flat(Infinity)) if (c != null) el.append(c);
  return el;
}

/**
 * A reliability diagram from {cv: [{confidence, accuracy, count}], test: [...] | null}:
 * accuracy against confidence per bin, one line per split, with the diagonal of a perfectly
 * calibrated model. Null when there are no bins.
 */
export function reliabilityDiagram(reliability, modelTitle) {
  const series = [["cv", "cross-validation"], ["test", "test set"]]
    .map(([key, label]) => [key, label, ((reliability || {})[key] || []).filter((b) => b && b.count > 0)])
    .filter(([, , bins]) => bins.length);
  if (!series.length) return null;
  const W = 180;
  const pad = 34;
  const inner = W - pad - 8;
  const x = (v) => pad + inner * Math.max(0, Math.min(1, v));
  const y = (v) => 8 + inner * (1 - Math.max(0, Math.min(1, v)));
  const ticks = [0, 0.5, 1];
  const svg = svgEl("svg", { class: "reliability", viewBox: `0 0 ${W} ${W}`, width: W, height: W, role: "img",
    "aria-label": `Reliability diagram of ${modelTitle}: accuracy against confidence` },
  svgEl("title", null, `Reliability of ${modelTitle}: accuracy against confidence; the diagonal is perfect calibration`),
  svgEl("rect", { class: "rel-frame", x: pad, y: 8, width: inner, height: inner }),
  ticks.map((t) => [
    svgEl("text", { class: "rel-tick", x: x(t), y: 8 + inner + 11, "text-anchor": "middle" }, String(t)),
    svgEl("text", { class: "rel-tick", x: pad - 4, y: y(t) + 3, "text-anchor": "end" }, String(t)),
  ]),
  svgEl("text", { class: "rel-axis", x: x(0.5), y: W - 2, "text-anchor": "middle" }, "confidence"),
  svgEl("text", { class: "rel-axis", x: 10, y: y(0.5), "text-anchor": "middle", transform: `rotate(-90 10 ${y(0.5)})` }, "accuracy"),
  svgEl("line", { class: "rel-diagonal", x1: x(0), y1: y(0), x2: x(1), y2: y(1) }),
  series.map(([key, label, bins]) => {
    const total = bins.reduce((a, b) => a + b.count, 0);
    return svgEl("g", { class: `rel-series rel-${key}`, "data-split": key },
      svgEl("polyline", { class: "rel-line", points: bins.map((b) => `${x(b.confidence).toFixed(1)},${y(b.accuracy).toFixed(1)}`).join(" ") }),
      bins.map((b) => svgEl("circle", { class: "rel-point", cx: x(b.confidence).toFixed(1), cy: y(b.accuracy).toFixed(1),
        r: (1.5 + 3.5 * Math.sqrt(b.count / total)).toFixed(1) },
      svgEl("title", null, `${label}: confidence ${pct(b.confidence, 0)}, accuracy ${pct(b.accuracy, 0)}, ${plural(b.count, "image")}`))));
  }));
  return h("figure", { class: "reliability-figure" }, svg,
    h("figcaption", { class: "muted" }, "Reliability: accuracy against confidence ",
      series.map(([key, label]) => h("span", { class: `rel-key rel-key-${key}`, text: label })),
      h("span", { class: "rel-key rel-key-diagonal", text: "perfect" })));
}

// ---- thumbnails ----------------------------------------------------------------------------

const thumbSrc = (p) => p.thumbnail || thumbnailUrl(p.sha256);
const previewHref = (p) => thumbSrc(p).replace(/\/thumbnail$/, "/preview");

export function thumb(p, caption) {
  const name = p.source || p.sha256.slice(0, 12);
  return h("figure", { class: "thumb" },
    h("a", { href: previewHref(p), target: "_blank", rel: "noopener", title: `Open ${name}` },
      h("img", { src: thumbSrc(p), alt: name, loading: "lazy", width: 96, height: 96 })),
    h("figcaption", null, caption || name));
}

const MISSES_SHOWN = 24;

function misclassified(entry, source, onOpen) {
  const preds = ((entry.predictions || {})[source] || []).filter((p) => p.true !== p.pred);
  const box = h("div", { class: "misclassified" },
    h("h4", null, `Misclassified · ${SOURCE_TITLES[source] || source}`, h("span", { class: "count", text: ` (${preds.length})` })));
  if (!preds.length) {
    box.append(h("p", { class: "muted", text: (entry.predictions || {})[source] ? "None: every image was classified correctly." : "No per-image predictions in this report." }));
    return box;
  }
  const item = (p) => h("li", null,
    h("button", { type: "button", class: "miss", onclick: () => onOpen(p),
      "aria-label": `${p.source || p.sha256}: true ${p.true}, predicted ${p.pred}` },
      h("img", { src: thumbSrc(p), alt: "", loading: "lazy", width: 48, height: 48 }),
      h("span", { class: "miss-text" },
        h("span", { class: "miss-name", text: p.source || p.sha256.slice(0, 12) }),
        h("span", { class: "miss-labels" },
          h("span", { class: "true-label", text: p.true }), " → ",
          h("span", { class: "pred-label", text: p.pred }),
          p.score != null ? h("span", { class: "muted", text: ` (${pct(p.score, 0)})` }) : null))));
  const list = h("ul", { class: "miss-list" }, preds.slice(0, MISSES_SHOWN).map(item));
  box.append(list);
  if (preds.length > MISSES_SHOWN) {
    const more = h("button", { type: "button", class: "btn btn-small more-misses", text: `Show all ${preds.length}`,
      onclick: () => { list.append(...preds.slice(MISSES_SHOWN).map(item)); more.remove(); } });
    box.append(more);
  }
  return box;
}

// ---- one model card --------------------------------------------------------------------------

const PER_CLASS_PAGE = 20;

function perClassRow([label, s]) {
  // No images of the class in this data: recall and F1 are undefined, not 0.
  const none = s.support === 0;
  return h("tr", { class: none ? "no-support" : null },
    h("th", { scope: "row", text: label, title: label }),
    h("td", { text: none && !s.precision ? "–" : pct(s.precision, 0) }),
    h("td", { text: none ? "–" : pct(s.recall, 0) }),
    h("td", { text: none ? "–" : pct(s.f1, 0) }), h("td", { text: String(s.support ?? "–") }));
}

/** Per-class scores: every row up to MANY_CLASSES classes; beyond, a page at a time (worst F1
 * first), with a filter by name. */
function perClassTable(perClass) {
  const rows = Object.entries(perClass || {});
  const tbody = h("tbody", null);
  const table = h("table", { class: "per-class" },
    h("caption", { class: "visually-hidden", text: "Per-class scores" }),
    h("thead", null, h("tr", null,
      h("th", { scope: "col", text: "Class" }), h("th", { scope: "col", text: "Precision" }),
      h("th", { scope: "col", text: "Recall" }), h("th", { scope: "col", text: "F1" }), h("th", { scope: "col", text: "n" }))),
    tbody);
  if (rows.length <= MANY_CLASSES) {
    tbody.append(...rows.map(perClassRow));
    return table;
  }
  const f1 = ([, s]) => (s.support === 0 ? 2 : s.f1 ?? 0);
  const ordered = {
    worst: [...rows].sort((a, b) => f1(a) - f1(b) || a[0].localeCompare(b[0])),
    name: [...rows].sort((a, b) => a[0].localeCompare(b[0])),
  };
  let order = "worst";
  let page = 0;
  let query = "";
  const status = h("span", { class: "pager-status muted", "aria-live": "polite" });
  const prev = h("button", { type: "button", class: "btn btn-small pager-prev", text: "‹ Previous", onclick: () => { page -= 1; draw(); } });
  const next = h("button", { type: "button", class: "btn btn-small pager-next", text: "Next ›", onclick: () => { page += 1; draw(); } });
  function draw() {
    const q = query.trim().toLowerCase();
    const shown = q ? ordered[order].filter(([label]) => label.toLowerCase().includes(q)) : ordered[order];
    const pages = Math.max(1, Math.ceil(shown.length / PER_CLASS_PAGE));
    page = Math.max(0, Math.min(page, pages - 1));
    const from = page * PER_CLASS_PAGE;
    tbody.replaceChildren(...shown.slice(from, from + PER_CLASS_PAGE).map(perClassRow));
    status.textContent = shown.length
      ? `${from + 1}–${Math.min(from + PER_CLASS_PAGE, shown.length)} of ${plural(shown.length, "class", "classes")}${q ? ` matching “${query.trim()}”` : ""}`
      : `No class matches “${query.trim()}”.`;
    prev.disabled = page === 0;
    next.disabled = page >= pages - 1;
  }
  draw();
  return h("div", { class: "per-class-box" },
    h("div", { class: "per-class-tools" },
      h("input", { type: "search", class: "per-class-filter", placeholder: "Filter classes", "aria-label": "Filter classes by name",
        oninput: (e) => { query = e.target.value; page = 0; draw(); } }),
      h("select", { class: "per-class-order", "aria-label": "Order", onchange: (e) => { order = e.target.value; page = 0; draw(); } },
        h("option", { value: "worst", text: "worst F1 first" }), h("option", { value: "name", text: "by name" }))),
    table,
    h("div", { class: "pager" }, prev, status, next));
}

function metric(value, label, { big = false, extra, cls = "" } = {}) {
  return h("div", { class: `metric ${big ? "metric-big" : ""} ${cls}` },
    h("span", { class: "metric-value" }, value, extra ? h("span", { class: "metric-extra", text: extra }) : null),
    h("span", { class: "metric-label", text: label }));
}

/** Whether the backbone's top was fine-tuned, whether that was kept and why (CV figures). */
function fineTuningText(ft) {
  if (!ft.tried) return `Not tried: ${ft.reason}`;
  const verdict = ft.kept ? "Tried and kept: this backbone answers with its fine-tuned network" : "Tried, not kept: the frozen model answers";
  return `${verdict}${ft.seconds != null ? ` (${seconds(ft.seconds)})` : ""}. Decision: ${ft.reason}`;
}

function modelCard(name, entry, report, ctx, { ensemble = false, methodPicker = null, note = null } = {}) {
  const cardTitle = ensemble ? "Ensemble" : title(name);
  const shownSource = (entry.confusion && entry.confusion.source) || (entry.test ? "test" : entry.cv ? "cv" : "train");
  const folds = report.cv_folds;
  const onCell = (cell) => ctx.openCell(cardTitle, entry, cell);
  const openOne = (p) => ctx.openImages(cardTitle, `${p.source || p.sha256.slice(0, 12)}: true ${p.true} → predicted ${p.pred}`, [p]);

  const cv = entry.cv_accuracy != null
    ? metric(pct(entry.cv_accuracy), `cross-validated accuracy${folds ? ` (${folds}-fold)` : ""}`,
      { big: true, extra: entry.cv_accuracy_std != null ? `± ${pct(entry.cv_accuracy_std)}` : null })
    : metric("–", report.cv_note || "cross-validated accuracy: not available", { big: true });
  const test = entry.test_accuracy != null
    ? metric(pct(entry.test_accuracy), `test-set accuracy (${plural((entry.test && entry.test.n) ?? report.n_test ?? 0, "held-out image")})`, { big: true, cls: "metric-test" })
    : metric("–", "test-set accuracy: upload a test set to measure it", { big: true, cls: "metric-test metric-none" });

  const card = h("article", { class: `model-card${ensemble ? " ensemble" : ""}`, dataset: { model: ensemble ? "ensemble" : name } },
    h("header", { class: "model-head" },
      h("h3", { text: cardTitle }),
      ensemble ? (methodPicker || h("span", { class: "tag", text: entry.method || "majority vote" })) : null),
    note ? h("p", { class: "card-note", text: note }) : null,
    h("div", { class: "metrics" }, cv, test),
    h("dl", { class: "facts" },
      h("div", null, h("dt", { text: "Training-set score" }),
        h("dd", null, pct(entry.train_accuracy), h("span", { class: "muted", text: " · on the images it trained on, not an accuracy estimate" }))),
      ensemble ? null : h("div", null, h("dt", { text: "Training time" }), h("dd", { text: seconds(entry.train_seconds) })),
      entry.weights ? h("div", null, h("dt", { text: "Weights" }),
        h("dd", { text: Object.entries(entry.weights).map(([n, w]) => `${title(n)} ${w.toFixed(2)}`).join(" · ") })) : null,
      entry.calibration && entry.calibration.cv_ece_calibrated != null ? h("div", null, h("dt", { text: "Calibration error" }),
        h("dd", null, pct(entry.calibration.cv_ece_calibrated),
          h("span", { class: "muted", text: ` (cross-validated ECE; ${pct(entry.calibration.cv_ece_uncalibrated)} before calibration)` }))) : null,
      entry.hyperparameters ? h("div", null, h("dt", { text: "Head" }),
        h("dd", { class: "hyper", text: Object.entries(entry.hyperparameters).map(([k, v]) => `${k}=${typeof v === "number" ? +v.toPrecision(3) : v}`).join(", ") })) : null,
      entry.fine_tuning ? h("div", { class: "fine-tuning" }, h("dt", { text: "Fine-tuning" }),
        h("dd", null, fineTuningText(entry.fine_tuning))) : null),
    entry.reliability && !ensemble ? reliabilityDiagram(entry.reliability, cardTitle) : null,
    h("h4", null, "Per class", h("span", { class: "muted", text: ` · ${SOURCE_TITLES[shownSource] || shownSource}` })),
    perClassTable(entry.per_class),
    entry.confusion ? topConfusionList(entry.confusion, shownSource, onCell) : null,
    entry.confusion ? confusionBlock(entry.confusion, shownSource, onCell,
      { caption: `Confusion matrix · ${SOURCE_TITLES[shownSource] || shownSource}` }) : null,
    shownSource !== "cv" && entry.cv && entry.cv.confusion ? confusionBlock(entry.cv.confusion, "cv", onCell,
      { caption: "Confusion matrix · cross-validation", summary: "Cross-validation confusion matrix", collapsed: true }) : null,
    entry.train && entry.train.confusion && shownSource !== "train" ? confusionBlock(entry.train.confusion, "train", onCell,
      { caption: "Confusion matrix · training set", summary: "Training-set confusion matrix (not an accuracy estimate)", collapsed: true }) : null,
    misclassified(entry, shownSource, openOne));
  return card;
}

// ---- the whole report ------------------------------------------------------------------------

function summaryTable(report, ensemble) {
  const rows = Object.entries(report.backbones || {}).map(([name, e]) => [title(name), e, false]);
  if (ensemble) rows.push([`Ensemble (${ensemble.method || "vote"})`, ensemble, true]);
  const scores = rows.map(([, e]) => e.test_accuracy ?? e.cv_accuracy ?? -1);
  const best = Math.max(...scores);
  const allTied = scores.every((v) => v === best);
  return h("div", { class: "table-scroll" }, h("table", { class: "summary" },
    h("caption", { class: "visually-hidden", text: "Summary of all models" }),
    h("thead", null, h("tr", null,
      h("th", { scope: "col", text: "Model" }),
      h("th", { scope: "col", text: "Cross-validated accuracy" }),
      h("th", { scope: "col", text: "Test-set accuracy" }),
      h("th", { scope: "col", text: "Training-set score" }),
      h("th", { scope: "col", text: "Training time" }))),
    h("tbody", null, rows.map(([name, e, isEnsemble]) => h("tr", { class: isEnsemble ? "ensemble-row" : "" },
      h("th", { scope: "row" }, name, !allTied && (e.test_accuracy ?? e.cv_accuracy ?? -2) === best ? h("span", { class: "best", text: "best" }) : null),
      h("td", { text: e.cv_accuracy != null ? `${pct(e.cv_accuracy)} ± ${pct(e.cv_accuracy_std)}` : "–" }),
      h("td", { text: pct(e.test_accuracy) }),
      h("td", { class: "muted", text: pct(e.train_accuracy) }),
      h("td", { text: isEnsemble ? "–" : seconds(e.train_seconds) }))))));
}

function duplicateGroup(group) {
  return h("div", { class: "dup-group" }, group.members.map((m) => thumb(m, h("span", null,
    h("span", { class: "thumb-name", text: m.source || m.sha256.slice(0, 12) }),
    h("span", { class: "thumb-labels", text: `${m.label} · ${m.split === "test" ? "test" : "training"}` })))));
}

/**
 * Render `report` (GET /projects/<id>/results) into `container`.
 * ctx: {openCell(modelTitle, entry, cell), openImages(modelTitle, heading, predictions)}
 */
export function renderResults(container, report, ctx) {
  const names = Object.keys(report.backbones || {});
  const ensembles = report.ensembles || (report.ensemble ? { vote: report.ensemble } : {});
  const methods = Object.keys(ensembles);
  // The ensemble the predictions use (chosen by cross-validation), unless the user looks at another.
  const chosen = report.ensemble && methods.includes(report.ensemble.key) ? report.ensemble.key : null;
  let method = chosen || (methods.includes("vote") ? "vote" : methods[0]);

  const counts = report.counts || {};
  const nTrain = report.n_train ?? Object.values(counts).reduce((a, b) => a + b, 0);
  const about = [
    `${plural(nTrain, "training image")} in ${plural((report.classes || []).length, "class", "classes")}`,
    report.cv_folds ? `${report.cv_folds}-fold cross-validation` : report.cv_note,
    report.n_test ? `${plural(report.n_test, "test image")}` : "no test set",
  ].filter(Boolean).join(" · ");

  const cards = h("div", { class: "model-grid", dataset: { cards: String(names.length + (methods.length ? 1 : 0)) } });
  const summaryBox = h("div", { class: "summary-box" });

  function ensembleCard() {
    const picker = methods.length > 1 ? h("label", { class: "method-picker" },
      h("span", { class: "visually-hidden", text: "Ensemble method" }),
      h("select", { onchange: (e) => { method = e.target.value; draw(true); } },
        methods.map((m) => h("option", { value: m, selected: m === method,
          text: `${ensembles[m].method || m}${m === chosen ? " (used)" : ""}` })))) : null;
    const entry = ensembles[method];
    const note = chosen
      ? (method === chosen
        ? `Used for predictions: ${report.ensemble.why || "chosen by cross-validation"}.`
        : `Shown for comparison; predictions use the ${ensembles[chosen].method || chosen}.`)
      : null;
    return modelCard("ensemble", entry, report, ctx, { ensemble: true, methodPicker: picker, note });
  }

  function draw(focusPicker = false) {
    summaryBox.replaceChildren(summaryTable(report, method ? ensembles[method] : null));
    fill(cards, names.map((n) => modelCard(n, report.backbones[n], report, ctx)), method ? ensembleCard() : null);
    const select = cards.querySelector(".method-picker select");
    if (select && focusPicker) select.focus();
  }
  draw();

  const skipped = report.test_skipped || [];
  const dupGroups = report.near_duplicates || [];
  const straddling = dupGroups.filter((g) => g.straddles_train_and_test);
  fill(container,
    h("p", { class: "results-about", text: about }),
    summaryBox,
    dupGroups.length ? h("details", { class: `notice ${straddling.length ? "notice-warn" : "notice-info"} near-dups` },
      h("summary", null,
        `${plural(dupGroups.length, "group")} of near-duplicate images`,
        straddling.length
          ? ` (${straddling.length} with copies in both the training and the test set: the test accuracy may be optimistic)`
          : " (each group is kept within one cross-validation fold)"),
      h("div", { class: "dup-groups" }, dupGroups.map(duplicateGroup))) : null,
    skipped.length ? h("div", { class: "notice notice-warn" },
      h("p", { text: `${plural(skipped.length, "test image")} left out of the test metrics:` }),
      h("ul", null, skipped.map((s) => h("li", { text: `${s.source}: ${s.reason}` })))) : null,
    h("p", { class: "hint", text: "Click a cell of a confusion matrix, or a top confusion, to see the images behind it." }),
    cards,
    exportControl(report, title),
    curationPanels(report, title));
}

/** The images behind one confusion cell. */
export function cellImages(entry, { trueLabel, predLabel, source }) {
  return ((entry.predictions || {})[source] || []).filter((p) => p.true === trueLabel && p.pred === predLabel);
}

export { SOURCE_TITLES };
