// In-page modal dialogs (<dialog>), instead of window.confirm/prompt: styled, keyboard-usable
// (Escape cancels, focus starts on the safe choice), and text-only content.
import { h } from "./dom.js";

/**
 * Ask for a confirmation. Resolves true on the confirming button, false on Cancel or Escape.
 * `value` (a string) adds a text field, prefilled; the promise then resolves to its trimmed
 * text, or null when cancelled. `danger` colours the confirming button as destructive.
 */
export function ask({ title, message = "", confirm = "OK", danger = false, value = null, label = "" }) {
  return new Promise((resolve) => {
    const input = value == null ? null
      : h("input", { id: "dialog-input", type: "text", maxlength: 200, autocomplete: "off", value });
    const ok = h("button", { type: "submit", class: `btn ${danger ? "btn-danger" : "btn-primary"} dialog-ok`, text: confirm });
    const cancel = h("button", { type: "button", class: "btn dialog-cancel", text: "Cancel" });
    const dialog = h("dialog", { class: "dialog", "aria-labelledby": "dialog-title" },
      h("form", { method: "dialog", class: "stack" },
        h("h2", { id: "dialog-title", class: "dialog-title", text: title }),
        message ? h("p", { class: "dialog-message", text: message }) : null,
        input ? h("div", { class: "field" }, h("label", { for: "dialog-input", text: label }), input) : null,
        h("div", { class: "actions dialog-actions" }, cancel, ok)));
    let answer = input ? null : false;
    ok.addEventListener("click", (event) => {
      if (input) {
        if (!input.value.trim()) {
          event.preventDefault();
          input.focus();
          return;
        }
        answer = input.value.trim();
      } else {
        answer = true;
      }
    });
    cancel.addEventListener("click", () => dialog.close());
    dialog.addEventListener("close", () => {
      dialog.remove();
      resolve(answer);
    });
    document.body.append(dialog);
    dialog.showModal();
    (input || cancel).focus();
    if (input) input.select();
  });
}
