// Curating from the results: the training images the model least believes (relabel or remove
// them in one click, through the image API), and the learning curve ("how many more images?").
// Both read the training report (GET …/results): `mislabelled` and each backbone's
// `learning_curve` (models/curation.py, models/learning_curve.py).
import { api, reportError, thumbnailUrl } from "./api.js";
import { h, pct, plural } from "./dom.js";

const SHOWN = 12;
const SVG = "http://www.w3.org/2000/svg";

/** Tell the page the project's images changed (project.js reloads the class counts). */
const changed = () => document.dispatchEvent(new CustomEvent("images-changed"));

function svgEl(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v != null) el.setAttribute(k, String(v));
  for (const c of children.flat(Infinity)) if (c != null) el.append(c);
  return el;
}

// ---- likely mislabelled ----------------------------------------------------------------------

function suspectRow(row, projectId, classes) {
  const name = row.source || row.sha256.slice(0, 12);
  const path = `/projects/${projectId}/images/${row.sha256}`;
  const status = h("span", { class: "suspect-status muted", "aria-live": "polite" });
  const actions = h("span", { class: "suspect-actions" });
  const item = h("li", { class: "suspect", dataset: { sha256: row.sha256 } },
    h("a", { href: (row.thumbnail || thumbnailUrl(row.sha256)).replace(/\/thumbnail$/, "/preview"), target: "_blank", rel: "noopener", title: `Open ${name}` },
      h("img", { src: row.thumbnail || thumbnailUrl(row.sha256), alt: name, loading: "lazy", width: 56, height: 56 })),
    h("span", { class: "suspect-text" },
      h("span", { class: "suspect-name", text: name, title: name }),
      h("span", null, "labelled ", h("span", { class: "pred-label suspect-given", text: row.given }),
        h("span", { class: "muted", text: ` (model: ${pct(row.given_probability, 0)})` })),
      h("span", null, "looks like ", h("span", { class: "true-label suspect-suggested", text: row.suggested }),
        h("span", { class: "muted", text: ` (${pct(row.suggested_probability, 0)})` })),
      status),
    actions);

  const settle = (text, undo) => {
    status.textContent = text;
    actions.replaceChildren(...(undo ? [h("button", { type: "button", class: "btn btn-small", text: "Undo", onclick: undo })] : []));
    item.classList.add("suspect-done");
  };
  const act = async (button, request, done) => {
    for (const b of actions.querySelectorAll("button, select")) b.disabled = true;
    try {
      await request();
      done();
      changed();
    } catch (err) {
      if (err.status === 404) settle("No longer in the project.");
      else {
        reportError(err);
        for (const b of actions.querySelectorAll("button, select")) b.disabled = false;
        button.focus();
      }
    }
  };
  const relabel = (label, then) => (e) => act(e.currentTarget,
    () => api(path, { method: "PATCH", json: { label } }), then);
  function offer() {
    item.classList.remove("suspect-done");
    status.textContent = "";
    const remove = h("button", { type: "button", class: "btn btn-small btn-danger-outline suspect-remove", text: "Remove" });
    remove.addEventListener("click", (e) => {
      if (remove.dataset.armed !== "yes") { // destructive: a second click confirms
        remove.dataset.armed = "yes";
        remove.textContent = "Confirm remove";
        status.textContent = "Removes the image from the project.";
        return;
      }
      act(e.currentTarget, () => api(path, { method: "DELETE" }), () => settle("Removed from the project. Retrain to update."));
    });
    const others = classes.filter((c) => c !== row.given && c !== row.suggested);
    actions.replaceChildren(
      h("button", { type: "button", class: "btn btn-small btn-primary suspect-relabel", text: `Relabel as ${row.suggested}`,
        onclick: relabel(row.suggested, () => settle(`Relabelled as ${row.suggested}. Retrain to update.`,
          relabel(row.given, offer))) }),
      others.length ? h("select", { class: "suspect-other", "aria-label": `Relabel ${name} as another class`,
        onchange: (e) => { const label = e.target.value; if (label) relabel(label, () => settle(`Relabelled as ${label}. Retrain to update.`, relabel(row.given, offer)))(e); } },
      h("option", { value: "", text: "other class…" }), others.map((c) => h("option", { value: c, text: c }))) : null,
      remove);
  }
  if (row.removed) settle("Removed from the project since this training.");
  else if (row.current_label && row.current_label !== row.given) settle(`Now labelled ${row.current_label}.`);
  else offer();
  return item;
}

/** The "Likely mislabelled" block of a report, or null when the report has none. */
export function mislabelledPanel(report) {
  const block = report.mislabelled;
  if (!block) return null;
  const box = h("section", { class: "curation mislabelled", "aria-labelledby": "mislabelled-h" },
    h("h3", { id: "mislabelled-h", text: "Likely mislabelled" }));
  if (!block.images || !block.images.length) {
    box.append(h("p", { class: "muted suspect-none", text: block.note ? `Not ranked: ${block.note}.`
      : "None: the cross-validated model agrees with every training image's label." }));
    return box;
  }
  box.append(h("p", { class: "hint", text: "Training images whose label the cross-validated model believes least "
    + "(it never saw them while it was trained), likeliest mistakes first. Relabel the wrong ones, remove those "
    + "that do not belong, then retrain. Hard but correct images show up here too." }));
  const rows = block.images.map((row) => suspectRow(row, report.project_id, report.classes || []));
  const list = h("ol", { class: "suspect-list" }, rows.slice(0, SHOWN));
  box.append(list);
  if (rows.length > SHOWN) {
    const more = h("button", { type: "button", class: "btn btn-small suspect-more", text: `Show ${rows.length - SHOWN} more` ,
      onclick: () => { list.append(...rows.slice(SHOWN)); more.remove(); } });
    box.append(more);
  }
  return box;
}

// ---- learning curve --------------------------------------------------------------------------

const COLOURS = ["#3b5bdb", "#e8590c", "#2b8a3e", "#ae3ec9", "#1098ad", "#f08c00"];

/**
 * A chart of CV accuracy against the number of training images, one line per backbone, each
 * extended (dashed) to twice the images with its extrapolation and band. Null without curves.
 */
export function learningCurveChart(curves, titles) {
  const named = Object.entries(curves).filter(([, c]) => c && (c.accuracy || []).length);
  if (!named.length) return null;
  const W = 320;
  const H = 200;
  const pad = { left: 38, right: 10, top: 10, bottom: 30 };
  const maxN = Math.max(...named.map(([, c]) => (c.expected_at_2x || {}).n_images || Math.max(...c.n_images)));
  const values = named.flatMap(([, c]) => [...c.accuracy, (c.expected_at_2x || {}).low, (c.expected_at_2x || {}).high]).filter((v) => v != null);
  const lo = Math.max(0, Math.floor((Math.min(...values) - 0.05) * 10) / 10);
  const hi = Math.min(1, Math.ceil((Math.max(...values) + 0.05) * 10) / 10);
  const x = (n) => pad.left + (W - pad.left - pad.right) * (n / maxN);
  const y = (v) => pad.top + (H - pad.top - pad.bottom) * (1 - (v - lo) / Math.max(hi - lo, 1e-9));
  const yTicks = [lo, (lo + hi) / 2, hi];
  const xTicks = [0, Math.round(maxN / 2), maxN];
  const svg = svgEl("svg", { class: "learning-curve", viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img",
    "aria-label": "Learning curve: cross-validated accuracy against the number of training images, extrapolated to twice the images" },
  svgEl("rect", { class: "lc-frame", x: pad.left, y: pad.top, width: W - pad.left - pad.right, height: H - pad.top - pad.bottom }),
  yTicks.map((t) => svgEl("text", { class: "lc-tick", x: pad.left - 4, y: y(t) + 3, "text-anchor": "end" }, pct(t, 0))),
  xTicks.map((t) => svgEl("text", { class: "lc-tick", x: x(t), y: H - pad.bottom + 12, "text-anchor": "middle" }, String(t))),
  svgEl("text", { class: "lc-axis", x: x(maxN / 2), y: H - 3, "text-anchor": "middle" }, "training images"),
  named.map(([name, c], k) => {
    const colour = COLOURS[k % COLOURS.length];
    const pts = c.n_images.map((n, i) => [x(n), y(c.accuracy[i])]);
    const ahead = c.expected_at_2x;
    const last = pts[pts.length - 1];
    return svgEl("g", { class: "lc-series", "data-backbone": name, stroke: colour, fill: colour },
      svgEl("polyline", { class: "lc-line", fill: "none", points: pts.map((p) => p.map((v) => v.toFixed(1)).join(",")).join(" ") }),
      pts.map(([px, py], i) => svgEl("circle", { class: "lc-point", cx: px.toFixed(1), cy: py.toFixed(1), r: 3 },
        svgEl("title", null, `${titles(name)}: ${pct(c.accuracy[i])} with ${c.n_images[i]} images`))),
      ahead ? [
        svgEl("line", { class: "lc-ahead", x1: last[0], y1: last[1], x2: x(ahead.n_images), y2: y(ahead.accuracy) }),
        svgEl("line", { class: "lc-band", x1: x(ahead.n_images), x2: x(ahead.n_images), y1: y(ahead.low), y2: y(ahead.high) }),
        svgEl("circle", { class: "lc-expected", cx: x(ahead.n_images), cy: y(ahead.accuracy), r: 3.5, fill: "#fff" },
          svgEl("title", null, `${titles(name)}: expected ${pct(ahead.accuracy)} with ${ahead.n_images} images (${Math.round(100 * ahead.level)}% band ${pct(ahead.low)}–${pct(ahead.high)})`)),
      ] : null);
  }));
  return h("figure", { class: "learning-curve-figure" }, svg,
    h("figcaption", { class: "muted" }, named.map(([name], k) => h("span", { class: "lc-key", style: { borderTopColor: COLOURS[k % COLOURS.length] }, text: titles(name) })),
      h("span", { class: "lc-key lc-key-ahead", text: "expected with 2× images (band)" })));
}

/** The "How many more images?" block: the chart and, for the best backbone, what 2x would give. */
export function learningCurvePanel(report, titles = (n) => n) {
  const curves = Object.fromEntries(Object.entries(report.backbones || {}).map(([n, e]) => [n, e.learning_curve]));
  const chart = learningCurveChart(curves, titles);
  if (!chart) return null;
  const best = Object.entries(curves).filter(([, c]) => c)
    .sort((a, b) => b[1].accuracy[b[1].accuracy.length - 1] - a[1].accuracy[a[1].accuracy.length - 1])[0];
  const [name, curve] = best;
  const ahead = curve.expected_at_2x;
  const gains = curve.gain_per_doubling || {};
  const top = curve.classes_gaining_most || [];
  return h("section", { class: "curation learning", "aria-labelledby": "learning-h" },
    h("h3", { id: "learning-h", text: "How many more images?" }),
    h("p", { class: "hint", text: "Cross-validated accuracy with 25, 50, 75 and 100% of the training images "
      + "(the same head settings, refitted on each share), and an inverse power law fitted to those points." }),
    chart,
    ahead ? h("p", { class: "lc-expectation" }, `${titles(name)}: with ${plural(ahead.n_images, "training image")} (twice as many), expect about `,
      h("strong", { text: pct(ahead.accuracy) }), ` cross-validated accuracy (${Math.round(100 * ahead.level)}% band ${pct(ahead.low)}–${pct(ahead.high)}; now ${pct(curve.accuracy[curve.accuracy.length - 1])}).`) : null,
    top.length
      ? h("div", { class: "lc-classes" }, h("span", { text: "Classes that would gain most from more images: " }),
        h("ol", { class: "lc-class-list" }, top.map((c) => h("li", { dataset: { class: c } }, h("strong", { text: c }),
          h("span", { class: "muted", text: ` +${(100 * gains[c]).toFixed(1)} points per doubling` })))))
      : h("p", { class: "muted lc-classes", text: "No class is still improving with more images: the curve has flattened." }));
}

/** Both curation blocks for a report, in one container (the results page's hook). */
export function curationPanels(report, titles) {
  const parts = [mislabelledPanel(report), learningCurvePanel(report, titles)].filter(Boolean);
  return parts.length ? h("div", { class: "curation-grid" }, parts) : null;
}
