// "Download model": pick a format and the ensemble or one backbone; the link is the export API
// for the iteration shown (GET /api/v1/projects/<id>/iterations/<n>/export), a zip with the
// model, labels.txt, model.json and predict.py.
import { h } from "./dom.js";

export const FORMATS = {
  onnx: "ONNX (also in the browser)",
  tflite: "TensorFlow Lite",
  savedmodel: "TensorFlow SavedModel",
  openvino: "OpenVINO IR",
  keras: "Keras (.keras)",
};

/** The control for `report` (a results response: project_id, iteration, backbones). */
export function exportControl(report, title = (name) => name) {
  if (report.project_id == null || report.iteration == null) return null;
  const base = `/api/v1/projects/${report.project_id}/iterations/${report.iteration}/export`;
  const targets = ["ensemble", ...Object.keys(report.backbones || {})];
  const format = h("select", { id: "export-format", "aria-label": "Model format" },
    Object.entries(FORMATS).map(([value, text]) => h("option", { value, text })));
  const target = h("select", { id: "export-target", "aria-label": "Model to download" },
    targets.map((t) => h("option", { value: t, text: t === "ensemble" ? "Ensemble" : title(t) })));
  const link = h("a", { id: "export-link", class: "btn btn-small", download: "", text: "Download model" });
  const update = () => {
    link.href = `${base}?format=${encodeURIComponent(format.value)}&backbone=${encodeURIComponent(target.value)}`;
  };
  format.addEventListener("change", update);
  target.addEventListener("change", update);
  update();
  return h("div", { class: "export-model field-inline" },
    h("span", { class: "export-label", text: `Download iteration ${report.iteration}:` }), target, format, link,
    h("span", { class: "muted", text: "A format's first download converts the model (up to minutes)." }));
}
