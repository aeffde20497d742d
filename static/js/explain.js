// "Why this answer": asks POST .../explain for the image just classified, then offers a heat
// map toggled over the image (a canvas laid over it) and the most similar training images.
import { api, reportError } from "./api.js";
import { h, pct } from "./dom.js";

/** Paint `grid` (rows of 0..1 values over the whole image) onto `canvas`, sized to `img`. */
function paint(canvas, img, grid) {
  const rows = grid.length;
  const cols = rows ? grid[0].length : 0;
  if (!rows || !cols) return;
  const small = document.createElement("canvas");
  small.width = cols;
  small.height = rows;
  const ctx = small.getContext("2d");
  const pixels = ctx.createImageData(cols, rows);
  grid.flat().forEach((v, i) => {
    // hot colours for strong evidence: red, through yellow at the top; transparent for none
    pixels.data.set([255, Math.round(220 * v), 0, Math.round(200 * v)], 4 * i);
  });
  ctx.putImageData(pixels, 0, 0);
  canvas.width = img.clientWidth;
  canvas.height = img.clientHeight;
  const out = canvas.getContext("2d");
  out.imageSmoothingEnabled = true;
  out.clearRect(0, 0, canvas.width, canvas.height);
  out.drawImage(small, 0, 0, canvas.width, canvas.height);
}

/**
 * Add "Why this answer" to a rendered prediction (`root`: the .prediction element).
 * url: the API path of the iteration's explain route; file: the classified image;
 * answer: the predict answer (the class explained is its ensemble's label or best guess).
 */
export async function attachExplain(root, answer, { url, file, titles = {} }) {
  const img = root.querySelector(".prediction-image img");
  const body = root.querySelector(".prediction-body");
  if (!img || !body || !file) return;
  const section = h("section", { class: "explain", "aria-label": "Why this answer" },
    h("h4", { text: "Why this answer" }), h("p", { class: "muted explain-status", text: "Looking at the image…" }));
  body.append(section);

  const ensemble = answer.ensemble || {};
  const label = ensemble.best_guess ?? ensemble.label;
  const known = label && label !== "unknown" && (answer.classes || []).includes(label);
  const explainWith = async (backbone) => {
    const form = new FormData();
    form.append("file", file, file.name);
    const params = new URLSearchParams();
    if (answer.iteration != null) params.set("iteration", answer.iteration); // the one that answered
    if (known) params.set("label", label);
    if (backbone) params.set("backbone", backbone);
    const query = params.toString();
    return api(`${url}${query ? `?${query}` : ""}`, { method: "POST", form });
  };
  let why;
  try {
    why = await explainWith(null);
  } catch (err) {
    section.querySelector(".explain-status").textContent = "Could not explain this answer.";
    reportError(err);
    return;
  }
  if (!img.isConnected) return; // another image was classified meanwhile

  // The overlay: wrap the image so that a canvas can sit exactly on it.
  const wrap = h("span", { class: "heat-wrap" });
  img.replaceWith(wrap);
  const canvas = h("canvas", { class: "heat-map", "aria-hidden": "true" });
  canvas.hidden = true;
  wrap.append(img, canvas);
  const toggle = h("input", { type: "checkbox", id: "heat-toggle" });
  const redraw = () => { if (!canvas.hidden) paint(canvas, img, why.grid); };
  toggle.addEventListener("change", () => {
    canvas.hidden = !toggle.checked;
    redraw();
  });
  new ResizeObserver(redraw).observe(img); // the page reflows: keep the map on the image

  // Several backbones: each has its own map and neighbours; the first is shown first.
  const names = Object.keys(answer.backbones || {});
  const picker = names.length > 1 ? h("select", { id: "explain-backbone", "aria-label": "Backbone to explain" },
    names.map((n) => h("option", { value: n, text: titles[n] || n }))) : null;
  const details = h("div", { class: "explain-details" });
  const show = () => {
    const method = why.method === "grad-cam" ? "Grad-CAM" : "occlusion";
    const neighbours = why.neighbours || [];
    toggle.nextSibling.textContent = ` Show what drove “${why.label}” (${pct(why.score)}) on the image`;
    if (picker) picker.value = why.backbone;
    details.replaceChildren(
      h("p", { class: "muted", text: `${titles[why.backbone] || why.backbone}, ${method}: red where the evidence is strongest.` }),
      neighbours.length ? h("p", { class: "eyebrow", text: "Most similar training images" }) : null,
      neighbours.length ? h("ul", { class: "neighbours" }, neighbours.map((n) =>
        h("li", { class: "neighbour" },
          h("img", { src: n.thumbnail, alt: `Training image labelled ${n.label}`,
            // deleted from the project since training: no thumbnail to show, keep the label
            onerror: (e) => e.target.remove() }),
          h("span", { class: "neighbour-label", text: n.label, title: n.label }),
          h("span", { class: "muted", text: `${pct(n.similarity, 0)} alike` })))) : null);
    redraw();
  };
  if (picker) {
    picker.addEventListener("change", async () => {
      picker.disabled = true;
      try {
        why = await explainWith(picker.value);
        show();
      } catch (err) {
        reportError(err);
      } finally {
        picker.disabled = false;
      }
    });
  }
  section.replaceChildren(
    h("h4", { text: "Why this answer" }),
    h("label", { class: "heat-toggle-label", for: "heat-toggle" }, toggle, ""),
    picker, details);
  show();
}
