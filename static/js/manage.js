// Managing a project from its page: rename or delete the project; select images (several at
// once) to relabel, move between training and test, or delete; rename or merge a class; and
// undo the last of those changes.
//
// Contract:
// - manage({ base, actionsRoot, panelRoot, onChanged }) builds the project's Rename/Delete
//   buttons in actionsRoot and a collapsed "Manage images" panel in panelRoot; returns
//   { refresh(project) }, to call whenever the project was (re)loaded: when the panel is
//   open, it updates its class lists and images (a closed panel fills them when opened).
// - Image changes go through POST {base}/images/bulk (one transaction on the server: all or
//   nothing); its answer's undo token backs the Undo button (then Redo), for the last change.
// - Deleting images or the project, and merging a class into another, ask first (dialogs.js);
//   relabelling and moving do not (they are undone in one click).
// - After every change onChanged() reloads the project (class cards, counts). A failed
//   change is reported and the images are reloaded from the server; the selection is kept.
import { api, reportError, showAlert } from "./api.js";
import { ask } from "./dialogs.js";
import { h, plural } from "./dom.js";

const PAGE = 120; // images drawn at a time

const SPLIT_NAMES = { train: "training", test: "test" };

export function manage({ base, actionsRoot, panelRoot, onChanged = () => {} }) {
  let project = null;
  let images = []; // the listing, as the API gives it
  let shown = PAGE;
  let lastClicked = null; // for shift-click ranges
  const selected = new Set();
  let undoToken = null;
  let undoIsRedo = false;

  // ---- the project: rename, delete --------------------------------------------------------

  const renameProject = h("button", { type: "button", id: "project-rename-btn", class: "btn btn-small", text: "Rename" });
  const deleteProject = h("button", { type: "button", id: "project-delete-btn", class: "btn btn-small btn-danger-outline",
    text: "Delete project…" });
  actionsRoot.replaceChildren(renameProject, deleteProject);

  renameProject.addEventListener("click", async () => {
    const name = await ask({ title: "Rename project", label: "Name", value: project ? project.name : "", confirm: "Rename" });
    if (name == null || (project && name === project.name)) return;
    try {
      await api(base, { method: "PATCH", json: { name } });
      onChanged();
    } catch (err) {
      reportError(err);
    }
  });

  deleteProject.addEventListener("click", async () => {
    const name = project ? project.name : "this project";
    const n = project ? (project.n_train || 0) + (project.n_test || 0) : 0;
    const its = project && project.iterations ? project.iterations.length : 0;
    const sure = await ask({
      title: `Delete “${name}”?`,
      message: `Its ${plural(n, "image")}, ${plural(its, "trained iteration")} and training history are removed for good. This cannot be undone.`,
      confirm: "Delete project", danger: true });
    if (!sure) return;
    deleteProject.disabled = true;
    try {
      await api(base, { method: "DELETE" });
      window.location.assign("/");
    } catch (err) {
      deleteProject.disabled = false;
      reportError(err);
    }
  });

  // ---- the images panel -------------------------------------------------------------------

  const classFilter = h("select", { id: "manage-class", "aria-label": "Show the images of class" });
  const splitFilter = h("select", { id: "manage-split", "aria-label": "Show training or test images" },
    h("option", { value: "", text: "Training and test" }),
    h("option", { value: "train", text: "Training only" }),
    h("option", { value: "test", text: "Test only" }));
  const selectAll = h("input", { id: "manage-select-all", type: "checkbox" });
  const count = h("span", { id: "manage-count", class: "muted", "aria-live": "polite", text: "0 selected" });
  const classNames = h("datalist", { id: "manage-classes" });
  const newLabel = h("input", { id: "manage-label", type: "text", maxlength: 100, autocomplete: "off",
    list: "manage-classes", placeholder: "class", "aria-label": "New class for the selected images" });
  const relabel = h("button", { type: "submit", id: "manage-relabel", class: "btn btn-small", text: "Relabel" });
  const toTrain = h("button", { type: "button", id: "manage-to-train", class: "btn btn-small", text: "Move to training" });
  const toTest = h("button", { type: "button", id: "manage-to-test", class: "btn btn-small", text: "Move to test" });
  const remove = h("button", { type: "button", id: "manage-delete", class: "btn btn-small btn-danger-outline", text: "Delete…" });
  const grid = h("div", { id: "manage-grid", class: "manage-grid", role: "group", "aria-label": "Images" });
  const more = h("button", { type: "button", id: "manage-more", class: "btn btn-small", hidden: true });
  const undoText = h("span", { id: "manage-undo-text" });
  const undoButton = h("button", { type: "button", id: "manage-undo-btn", class: "btn btn-small", text: "Undo" });
  const undoBar = h("div", { id: "manage-undo", class: "manage-undo", role: "status", hidden: true }, undoText, undoButton);

  const renameFrom = h("select", { id: "class-rename-from", "aria-label": "Class to rename" });
  const renameTo = h("input", { id: "class-rename-to", type: "text", maxlength: 100, autocomplete: "off",
    list: "manage-classes", placeholder: "new name, or an existing class to merge into", "aria-label": "New name" });
  const renameClass = h("button", { type: "submit", id: "class-rename-btn", class: "btn btn-small", text: "Rename class" });

  const panel = h("details", { id: "manage-panel", class: "manage" },
    h("summary", { text: "Manage images: relabel, move, delete, rename classes" }),
    h("div", { class: "manage-body" },
      h("form", { id: "class-rename-form", class: "manage-row" },
        h("label", { for: "class-rename-from", class: "manage-row-title", text: "Rename or merge a class" }),
        renameFrom, renameTo, renameClass),
      h("div", { class: "manage-row" },
        h("span", { class: "manage-row-title", text: "Show" }), classFilter, splitFilter),
      h("form", { id: "manage-actions", class: "manage-row manage-actions" },
        h("label", { class: "manage-select-all" }, selectAll, " All shown"), count,
        newLabel, classNames, relabel, toTrain, toTest, remove),
      undoBar, grid, more));
  panelRoot.replaceChildren(panel);

  function selectionChanged() {
    count.textContent = `${selected.size} selected`;
    const none = selected.size === 0;
    for (const b of [relabel, toTrain, toTest, remove]) b.disabled = none;
    const visible = grid.querySelectorAll("input[type=checkbox]");
    selectAll.checked = visible.length > 0 && [...visible].every((c) => c.checked);
  }

  function drawGrid() {
    const page = images.slice(0, shown);
    grid.replaceChildren(...page.map((im, index) => {
      const box = h("input", { type: "checkbox", value: im.sha256, "aria-label": `${im.name} (${im.label}, ${SPLIT_NAMES[im.split]})` });
      box.checked = selected.has(im.sha256);
      box.addEventListener("click", (event) => {
        if (event.shiftKey && lastClicked != null) { // a range, as in file managers
          const [a, b] = [Math.min(lastClicked, index), Math.max(lastClicked, index)];
          for (const other of images.slice(a, b + 1)) {
            if (box.checked) selected.add(other.sha256); else selected.delete(other.sha256);
          }
          grid.querySelectorAll("input[type=checkbox]").forEach((c) => { c.checked = selected.has(c.value); });
        } else if (box.checked) selected.add(im.sha256);
        else selected.delete(im.sha256);
        lastClicked = index;
        selectionChanged();
      });
      return h("label", { class: `manage-item split-${im.split}`, title: im.name, dataset: { sha256: im.sha256 } },
        box,
        h("img", { src: im.thumbnail, alt: "", loading: "lazy", width: 72, height: 72, class: "manage-thumb" }),
        h("span", { class: "manage-caption" },
          h("span", { class: "manage-label", text: im.label }),
          im.split === "test" ? h("span", { class: "badge", text: "test" }) : null));
    }));
    if (!images.length) grid.append(h("p", { class: "muted", text: "No images here." }));
    const left = images.length - page.length;
    more.hidden = left <= 0;
    more.textContent = `Show ${Math.min(left, PAGE)} more (${left} not shown)`;
    selectionChanged();
  }

  let loads = 0; // only the latest listing is drawn (filters may change faster than answers)

  async function loadImages() {
    const load = ++loads;
    const query = new URLSearchParams();
    if (classFilter.value) query.set("label", classFilter.value);
    if (splitFilter.value) query.set("split", splitFilter.value);
    grid.setAttribute("aria-busy", "true");
    try {
      const listed = await api(`${base}/images?${query}`);
      if (load !== loads) return;
      images = listed;
      const present = new Set(images.map((im) => im.sha256));
      for (const sha of [...selected]) if (!present.has(sha)) selected.delete(sha);
      drawGrid();
    } catch (err) {
      reportError(err);
    } finally {
      if (load === loads) grid.removeAttribute("aria-busy");
    }
  }

  function fillClasses() {
    const names = [...new Set([...Object.keys(project.classes || {}), ...Object.keys(project.test_classes || {})])]
      .sort((a, b) => a.localeCompare(b));
    const keep = classFilter.value;
    classFilter.replaceChildren(h("option", { value: "", text: "All classes" }),
      ...names.map((n) => h("option", { value: n, text: n })));
    classFilter.value = names.includes(keep) ? keep : "";
    const from = renameFrom.value;
    renameFrom.replaceChildren(...names.map((n) => h("option", { value: n, text: n })));
    if (names.includes(from)) renameFrom.value = from;
    classNames.replaceChildren(...names.map((n) => h("option", { value: n })));
    renameClass.disabled = names.length === 0;
  }

  function showUndo(text, token, redo = false) {
    undoToken = token;
    undoIsRedo = redo;
    undoText.textContent = text;
    undoButton.hidden = !token;
    undoButton.textContent = redo ? "Redo" : "Undo";
    undoBar.hidden = false;
  }

  /** POST one bulk change; true when done. The server applies all of it or nothing. */
  async function change(body, describe) {
    const buttons = panel.querySelectorAll("button");
    buttons.forEach((b) => { b.disabled = true; });
    try {
      const answer = await api(`${base}/images/bulk`, { method: "POST", json: body });
      const token = answer.undo && answer.undo.token;
      if (body.action === "undo") showUndo(undoIsRedo ? "Done again." : "Undone.", token, !undoIsRedo);
      else {
        selected.clear();
        showUndo(describe(answer), token);
        if (!token && answer.undo_unavailable) showAlert(`This change cannot be undone: ${answer.undo_unavailable}`, { kind: "warn" });
      }
      onChanged();
      return true;
    } catch (err) {
      reportError(err);
      await loadImages(); // show what the server has (nothing of the failed change)
      return false;
    } finally {
      buttons.forEach((b) => { b.disabled = false; });
      selectionChanged();
    }
  }

  const chosen = () => [...selected];

  panel.querySelector("#manage-actions").addEventListener("submit", (event) => {
    event.preventDefault();
    const label = newLabel.value.trim();
    if (!label) {
      newLabel.focus();
      return;
    }
    const n = selected.size;
    change({ action: "relabel", images: chosen(), label },
      (a) => `Relabelled ${plural(n, "image")} as ${label}${a.changed < n ? ` (${a.changed} changed)` : ""}.`);
  });
  for (const [button, split] of [[toTrain, "train"], [toTest, "test"]]) {
    button.addEventListener("click", () => {
      const n = selected.size;
      change({ action: "move", images: chosen(), split },
        (a) => `Moved ${plural(a.changed, "image")} to the ${SPLIT_NAMES[split]} set${a.changed < n ? ` (${n - a.changed} already there)` : ""}.`);
    });
  }
  remove.addEventListener("click", async () => {
    const n = selected.size;
    const sure = await ask({ title: `Delete ${plural(n, "image")}?`,
      message: "They are removed from this project. You can undo this for an hour.", confirm: "Delete", danger: true });
    if (sure) change({ action: "delete", images: chosen() }, () => `Deleted ${plural(n, "image")}.`);
  });
  undoButton.addEventListener("click", () => {
    if (undoToken) change({ action: "undo", token: undoToken });
  });

  panel.querySelector("#class-rename-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const from = renameFrom.value;
    const to = renameTo.value.trim();
    if (!from || !to || to === from) {
      renameTo.focus();
      return;
    }
    const sizes = (c) => ((project.classes || {})[c] || 0) + ((project.test_classes || {})[c] || 0);
    if (sizes(to) > 0) {
      const sure = await ask({ title: `Merge “${from}” into “${to}”?`,
        message: `All ${plural(sizes(from), "image")} of ${from} become ${to} (which has ${plural(sizes(to), "image")}); ${from} is gone. You can undo this.`,
        confirm: "Merge", danger: true });
      if (!sure) return;
    }
    const done = await change({ action: "relabel", class: from, label: to },
      (a) => (a.merged ? `Merged ${from} into ${to} (${plural(a.changed, "image")}).` : `Renamed class ${from} to ${to}.`));
    if (done) renameTo.value = "";
  });

  selectAll.addEventListener("change", () => {
    grid.querySelectorAll("input[type=checkbox]").forEach((c) => {
      c.checked = selectAll.checked;
      if (c.checked) selected.add(c.value); else selected.delete(c.value);
    });
    selectionChanged();
  });
  classFilter.addEventListener("change", () => { shown = PAGE; loadImages(); });
  splitFilter.addEventListener("change", () => { shown = PAGE; loadImages(); });
  more.addEventListener("click", () => { shown += PAGE; drawGrid(); });
  panel.addEventListener("toggle", () => {
    if (!panel.open) return;
    if (project) fillClasses();
    loadImages();
  });
  selectionChanged();

  return {
    refresh(p) {
      project = p;
      if (!panel.open) return; // filled when opened: with hundreds of classes, its lists are large
      fillClasses();
      loadImages();
    },
  };
}
