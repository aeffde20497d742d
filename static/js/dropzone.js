// A drop zone: drag files onto it, or use its "Choose files" button (keyboard users).
// Markup: <div class="dropzone"> ... <button class="pick"> <input type="file" hidden> </div>

let guarded = false;

/** Stop the browser from opening a file dropped next to (not onto) a drop zone. */
function guardWindow() {
  if (guarded) return;
  guarded = true;
  for (const type of ["dragover", "drop"]) {
    window.addEventListener(type, (e) => {
      if (!e.target.closest || !e.target.closest(".dropzone")) e.preventDefault();
    });
  }
}

export function dropzone(root, onFiles) {
  guardWindow();
  const input = root.querySelector("input[type=file]");
  const pick = root.querySelector(".pick");
  let depth = 0;
  const enabled = () => !root.classList.contains("disabled");
  if (pick) pick.addEventListener("click", () => enabled() && input.click());
  input.addEventListener("change", () => {
    const files = [...input.files];
    input.value = "";
    if (files.length) onFiles(files);
  });
  root.addEventListener("dragenter", (e) => {
    e.preventDefault();
    depth += 1;
    if (enabled()) root.classList.add("over");
  });
  root.addEventListener("dragover", (e) => {
    e.preventDefault();
    if (e.dataTransfer) e.dataTransfer.dropEffect = enabled() ? "copy" : "none";
  });
  root.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (!depth) root.classList.remove("over");
  });
  root.addEventListener("drop", (e) => {
    e.preventDefault();
    depth = 0;
    root.classList.remove("over");
    if (!enabled()) return;
    const files = [...((e.dataTransfer && e.dataTransfer.files) || [])];
    if (files.length) onFiles(files);
  });
  return {
    setEnabled(on) {
      root.classList.toggle("disabled", !on);
      root.setAttribute("aria-disabled", on ? "false" : "true");
      if (pick) pick.disabled = !on;
    },
  };
}
