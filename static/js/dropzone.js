// A drop zone: drag files onto it, or use its "Choose files" button (keyboard users).
// Markup: <div class="dropzone"> ... <button class="pick"> <input type="file" hidden> </div>
// With `{ folders: true }` a dropped folder gives every file under it, and an optional
// <button class="pick-folder"> <input type="file" webkitdirectory hidden> chooses one.

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

/** Whether a file found in a folder is one the user would count: hidden files (".DS_Store",
 * "._x.jpg" resource forks) are skipped. */
function visible(name) {
  return !name.startsWith(".");
}

/**
 * Every file under `entries` (FileSystemEntry-like: `isFile`/`isDirectory`/`name`,
 * `file(ok, fail)`, `createReader().readEntries(ok, fail)`, which hands out a folder's entries
 * in chunks until an empty one), depth first, hidden files and folders skipped, at most `limit`
 * files. The server checks every file; this only gathers them.
 */
export async function filesFromEntries(entries, limit = 10000) {
  const out = [];
  const file = (entry) => new Promise((ok, fail) => entry.file(ok, fail));
  const children = async (folder) => {
    const reader = folder.createReader();
    const all = [];
    for (;;) {
      const chunk = await new Promise((ok, fail) => reader.readEntries(ok, fail));
      if (!chunk.length) return all;
      all.push(...chunk);
    }
  };
  const walk = async (entry) => {
    if (out.length >= limit || !visible(entry.name)) return;
    if (entry.isFile) out.push(await file(entry));
    else if (entry.isDirectory) for (const child of await children(entry)) await walk(child);
  };
  for (const entry of entries) await walk(entry);
  return out;
}

/** The folder entries of a drop, or [] when it carries none (read during the drop event:
 * the browser empties `items` once the handler returns). */
function droppedFolders(dataTransfer) {
  const entries = [...((dataTransfer && dataTransfer.items) || [])]
    .map((item) => (item.kind === "file" && item.webkitGetAsEntry ? item.webkitGetAsEntry() : null))
    .filter(Boolean);
  return entries.some((entry) => entry.isDirectory) ? entries : [];
}

export function dropzone(root, onFiles, { folders = false } = {}) {
  guardWindow();
  const input = root.querySelector("input[type=file]:not([webkitdirectory])");
  const pick = root.querySelector(".pick");
  const folderInput = folders ? root.querySelector("input[type=file][webkitdirectory]") : null;
  const pickFolder = folderInput ? root.querySelector(".pick-folder") : null;
  if (pickFolder) pickFolder.addEventListener("click", () => enabled() && folderInput.click());
  if (folderInput) {
    folderInput.addEventListener("change", () => {
      const files = [...folderInput.files].filter((f) => (f.webkitRelativePath || f.name).split("/").every(visible));
      folderInput.value = "";
      if (files.length) onFiles(files);
    });
  }
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
    const entries = folders ? droppedFolders(e.dataTransfer) : [];
    if (entries.length) {
      filesFromEntries(entries).then((files) => files.length && onFiles(files),
        (err) => console.error("could not read the dropped folder", err));
      return;
    }
    const files = [...((e.dataTransfer && e.dataTransfer.files) || [])];
    if (files.length) onFiles(files);
  });
  return {
    setEnabled(on) {
      root.classList.toggle("disabled", !on);
      root.setAttribute("aria-disabled", on ? "false" : "true");
      if (pick) pick.disabled = !on;
      if (pickFolder) pickFolder.disabled = !on;
    },
  };
}
