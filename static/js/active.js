// Active suggestions in a finished batch: "Label these to improve the model". The batch's
// unlabelled images whose labels would help most (GET /batches/<id> `suggestions`, ranked by
// models/active.py), each with its thumbnail, the model's two likeliest classes and a class
// picker; "Add to training" sends the chosen ones to POST /batches/<id>/label, which copies
// them from the batch into the project (no re-upload).
import { api, reportError } from "./api.js";
import { h, pct, plural } from "./dom.js";

const NEW = "new"; // dataset flag of the "New class…" option

function picker(classes, suggestion) {
  const select = h("select", { class: "active-label", "aria-label": `Class of ${suggestion.name}` },
    h("option", { value: "", text: "Skip" }),
    classes.map((c) => h("option", { value: c, text: c })),
    h("option", { value: "", text: "New class…", dataset: { [NEW]: "1" } }));
  const custom = h("input", { type: "text", class: "active-new-label", maxlength: 100, placeholder: "class name",
    "aria-label": `New class for ${suggestion.name}`, hidden: true });
  select.addEventListener("change", () => {
    custom.hidden = !select.selectedOptions[0].dataset[NEW];
    if (!custom.hidden) custom.focus();
  });
  /** The chosen class, "" to skip it. */
  const value = () => (custom.hidden ? select.value : custom.value.trim());
  return { nodes: [select, custom], value, disable: () => { select.disabled = true; custom.disabled = true; } };
}

function addedText(where) {
  return `In the project as ${where.label}${where.split === "test" ? " (test)" : ""}`;
}

/** The suggestions block of `batch`, or null without suggestions. `onAdded(answer)` runs after
 * images were added (the page refreshes its class counts). */
export function suggestionsBlock(batch, { onAdded } = {}) {
  const suggestions = batch.suggestions || [];
  if (!suggestions.length) return null;
  const jobId = encodeURIComponent(batch.job_id);
  const status = h("p", { class: "active-status muted", "aria-live": "polite" });
  const items = suggestions.map((s) => {
    const pick = picker(batch.classes || [], s);
    const state = h("span", { class: "active-state", text: s.in_project ? addedText(s.in_project) : "" });
    if (s.in_project) pick.disable();
    const [first, second] = s.top || [];
    const li = h("li", { class: "active-item", dataset: { index: s.index } },
      h("img", { class: "active-thumb", alt: s.name, width: 96, height: 96,
        src: `/api/v1/batches/${jobId}/images/${encodeURIComponent(s.index)}/thumbnail` }),
      h("div", { class: "active-info" },
        h("span", { class: "active-name", title: s.name, text: s.name }),
        h("span", { class: "active-guess muted",
          text: second ? `model: ${first.label} ${pct(first.score, 0)} or ${second.label} ${pct(second.score, 0)}` : `model: ${s.prediction}` }),
        h("span", { class: "active-pick" }, ...pick.nodes),
        state));
    return { s, pick, state, li, done: Boolean(s.in_project) };
  });
  const add = h("button", { type: "button", class: "btn active-add", text: "Add to training" });
  add.addEventListener("click", async () => {
    const chosen = items.filter((it) => !it.done && it.pick.value());
    if (!chosen.length) {
      status.textContent = "Choose a class for at least one image (the others are skipped).";
      return;
    }
    add.disabled = true;
    try {
      const answer = await api(`/batches/${jobId}/label`, { method: "POST",
        json: { images: chosen.map((it) => ({ index: it.s.index, label: it.pick.value() })) } });
      const byIndex = new Map([...answer.added, ...answer.duplicates.map((d) => ({ ...d, label: d.kept_label, split: d.kept_split, duplicate: true }))]
        .map((a) => [a.index, a]));
      for (const it of chosen) {
        const a = byIndex.get(it.s.index);
        if (!a) continue;
        it.done = true;
        it.pick.disable();
        it.state.textContent = a.duplicate ? `Already in the project as ${a.label}` : addedText(a);
      }
      const counts = [...new Set(answer.added.map((a) => a.label))].map((c) => `${c}: ${plural(answer.classes[c] || 0, "image")}`);
      status.textContent = `Added ${plural(answer.added.length, "image")} to the training set`
        + (counts.length ? ` (${counts.join(", ")})` : "")
        + (answer.duplicates.length ? `; ${plural(answer.duplicates.length, "image")} already there` : "")
        + ". Train again to use them.";
      if (onAdded) onAdded(answer);
    } catch (err) {
      status.textContent = err.message;
      reportError(err);
    } finally {
      add.disabled = false;
    }
  });
  return h("section", { class: "batch-active", "aria-label": "Label these to improve the model" },
    h("h4", { text: "Label these to improve the model" }),
    h("p", { class: "muted", text: `The ${plural(suggestions.length, "image")} the model is least sure about, picked so they differ from one another. Choose a class for the ones you know and add them to the training images.` }),
    h("ul", { class: "active-list" }, items.map((it) => it.li)),
    h("div", { class: "active-actions" }, add, status));
}
