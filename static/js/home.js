// Home page: the project list and the "new project" form with the backbone picker.
import { api, reportError, showAlert } from "./api.js";
import { $, h, pct, plural } from "./dom.js";

const TITLES = { resnet50: "ResNet50", vgg16: "VGG16", xception: "Xception", efficientnet_lite0: "EfficientNet-Lite0",
  efficientnet_lite1: "EfficientNet-Lite1", efficientnet_lite2: "EfficientNet-Lite2" };
let backbones = [];

const asList = (body, key) => (Array.isArray(body) ? body : (body && body[key]) || []);

function projectSummary(p) {
  const bits = [];
  const classes = p.classes;
  const nClasses = Array.isArray(classes) ? classes.length : classes && typeof classes === "object" ? Object.keys(classes).length : p.n_classes;
  if (nClasses != null) bits.push(plural(nClasses, "class", "classes"));
  const nImages = p.n_images ?? p.image_count ?? p.n_train;
  if (nImages != null) bits.push(plural(nImages, "image"));
  if (Array.isArray(p.backbones) && p.backbones.length) bits.push(p.backbones.map((b) => TITLES[b] || b).join(", "));
  const acc = p.cv_accuracy ?? (p.latest && p.latest.cv_accuracy);
  if (acc != null) bits.push(`CV accuracy ${pct(acc)}`);
  if (p.status === "queued" || p.status === "running") bits.push("training…");
  else if (p.latest_iteration) bits.push(`trained (iteration ${p.latest_iteration})`);
  else bits.push("not trained yet");
  return bits.join(" · ");
}

async function loadProjects() {
  const list = $("#project-list");
  try {
    const projects = asList(await api("/projects"), "projects");
    list.replaceChildren();
    if (!projects.length) {
      list.append(h("p", { class: "empty", text: "No projects yet. Create one to get started." }));
    } else {
      list.append(h("ul", { class: "projects" }, projects.map((p) =>
        h("li", null,
          h("a", { href: `/projects/${encodeURIComponent(p.id)}`, class: "project-link" },
            h("span", { class: "project-name", text: p.name || `Project ${p.id}` }),
            h("span", { class: "project-meta", text: projectSummary(p) }))))));
    }
  } catch (err) {
    list.replaceChildren(h("p", { class: "muted", text: "Could not load the projects." }));
    reportError(err);
  } finally {
    list.removeAttribute("aria-busy");
  }
}

function backboneRow(b) {
  const id = `bb-${b.name}`;
  const title = b.title || TITLES[b.name] || b.name;
  const facts = [];
  if (b.input_size) facts.push(`${b.input_size}×${b.input_size} input`);
  if (b.offline) facts.push("weights ship with the app");
  if (b.gflops) facts.push(`${b.gflops} GFLOPs`);
  return h("div", { class: `backbone-option${b.available ? "" : " unavailable"}` },
    h("input", { type: "checkbox", id, name: "backbones", value: b.name, checked: Boolean(b.default) && b.available,
      "aria-describedby": `${id}-status`, onchange: updateWarning }),
    h("label", { for: id },
      h("span", { class: "backbone-title", text: title }),
      facts.length ? h("span", { class: "backbone-facts", text: facts.join(" · ") }) : null),
    h("p", { id: `${id}-status`, class: `backbone-status ${b.available ? "ok" : "missing"}` },
      h("span", { class: "badge", text: b.available ? "available" : "weights missing" }),
      b.available ? null : h("span", { class: "reason",
        text: b.weights_file && b.remedy ? `Off: ${b.weights_file} is not on this server. To enable it, ${b.remedy}.`
          : b.reason || "The weights file was not found." })));
}

function chosen() {
  return [...document.querySelectorAll("#backbone-list input[name=backbones]:checked")].map((el) => el.value);
}

function updateWarning() {
  const box = $("#backbone-warning");
  const missing = backbones.filter((b) => !b.available && chosen().includes(b.name));
  if (!missing.length) {
    box.hidden = true;
    box.replaceChildren();
    return;
  }
  box.hidden = false;
  const offline = backbones.filter((b) => b.offline && b.available).map((b) => b.title || TITLES[b.name] || b.name);
  box.replaceChildren(
    h("p", null, h("strong", { text: `Weights not found for ${missing.map((b) => b.title || TITLES[b.name] || b.name).join(", ")}.` }),
      " Training is refused until the file is where its note above says; or uncheck the backbone.",
      offline.length ? ` ${offline.join(", ")} ${offline.length === 1 ? "works" : "work"} offline.` : ""));
}

async function loadBackbones() {
  const list = $("#backbone-list");
  try {
    backbones = asList(await api("/backbones"), "backbones");
    const off = backbones.filter((b) => !b.available);
    list.replaceChildren(...backbones.map(backboneRow), ...(off.length ? [h("p", { id: "backbone-defaults-note", class: "hint",
        text: `Pre-selected: the backbones whose weights are on this server. ${off.map((b) => b.title || TITLES[b.name] || b.name).join(", ")} ${off.length === 1 ? "is" : "are"} off until ${off.length === 1 ? "its weights file is" : "their weights files are"} in place (see each note).` })] : []));
    updateWarning();
  } catch (err) {
    list.replaceChildren(h("p", { class: "muted", text: "Could not load the backbones." }));
    reportError(err);
  } finally {
    list.removeAttribute("aria-busy");
  }
}

async function createProject(event) {
  event.preventDefault();
  const nameInput = $("#project-name");
  const name = nameInput.value.trim();
  if (!name) {
    showAlert("Give the project a name.");
    nameInput.focus();
    return;
  }
  const names = chosen();
  if (!names.length) {
    showAlert("Choose at least one backbone.");
    return;
  }
  const button = $("#create-btn");
  button.disabled = true;
  try {
    const project = await api("/projects", { method: "POST", json: { name, backbones: names } });
    window.location.assign(`/projects/${encodeURIComponent(project.id)}`);
  } catch (err) {
    reportError(err);
    button.disabled = false;
  }
}

$("#create-form").addEventListener("submit", createProject);
loadProjects();
loadBackbones();
