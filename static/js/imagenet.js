// Pretrained mode: top-3 ImageNet labels per backbone plus the ensemble's vote.
import { api, reportError, showAlert } from "./api.js";
import { $, h } from "./dom.js";
import { dropzone } from "./dropzone.js";
import { renderPrediction } from "./predictions.js";
import { learnTitles, TITLES } from "./results.js";

let backbones = [];
let lastUrl = null;

function chosen() {
  return [...document.querySelectorAll("#imagenet-backbones input:checked")].map((el) => el.value);
}

async function loadBackbones() {
  const box = $("#imagenet-backbones");
  try {
    const body = await api("/imagenet/backbones");
    backbones = Array.isArray(body) ? body : body.backbones || [];
    learnTitles(backbones);
    box.replaceChildren(...backbones.map((b) => {
      const { available, reason } = b;
      const id = `in-${b.name}`;
      return h("div", { class: `backbone-option${available ? "" : " unavailable"}` },
        h("input", { type: "checkbox", id, value: b.name, checked: available && (b.default ?? true),
          "aria-describedby": `${id}-status` }),
        h("label", { for: id }, h("span", { class: "backbone-title", text: b.title || TITLES[b.name] || b.name })),
        h("p", { id: `${id}-status`, class: `backbone-status ${available ? "ok" : "missing"}` },
          h("span", { class: "badge", text: available ? "available" : "weights missing" }),
          available ? null : h("span", { class: "reason", text: reason || "The weights file was not found." })));
    }));
    if (!backbones.some((b) => b.available)) {
      showAlert("No backbone has its ImageNet weights on this server.", { kind: "warn" });
    }
  } catch (err) {
    box.replaceChildren(h("span", { class: "muted", text: "Could not load the backbones." }));
    reportError(err);
  } finally {
    box.removeAttribute("aria-busy");
  }
}

async function classify(files) {
  const file = files[0];
  const names = chosen();
  if (!names.length) {
    showAlert("Choose at least one backbone.");
    return;
  }
  const out = $("#imagenet-result");
  const busy = $("#imagenet-busy");
  if (lastUrl) URL.revokeObjectURL(lastUrl);
  lastUrl = URL.createObjectURL(file);
  out.replaceChildren(h("figure", { class: "prediction-image pending" }, h("img", { src: lastUrl, alt: `Image ${file.name}` })));
  busy.hidden = false;
  const form = new FormData();
  form.append("file", file, file.name);
  form.append("backbones", names.join(","));
  try {
    const body = await api("/imagenet/predict", { method: "POST", form });
    const answer = Array.isArray(body.results) ? body.results[0] : body;
    renderPrediction(out, answer, { imageUrl: lastUrl, fileName: file.name, titles: TITLES });
  } catch (err) {
    out.replaceChildren();
    reportError(err);
  } finally {
    busy.hidden = true;
  }
}

dropzone($("#imagenet-drop"), classify);
loadBackbones();
