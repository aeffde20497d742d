// Which iteration is live (the one predictions use when none is named: the published one,
// else the latest) and publishing the shown one: the "live" badge and the "Publish this
// iteration" button beside the results' iteration picker. A rollback is one click: show an
// earlier iteration, publish it.
import { api, reportError, showAlert } from "./api.js";
import { $ } from "./dom.js";

/** Say whether iteration `shown` is live; `live` and `published` as the API reports them. */
export function showLive({ shown, live, published }) {
  const isLive = shown != null && shown === live;
  $("#live-badge").hidden = !isLive;
  // Publishing pins it: also worth doing for the live latest, so a retrain does not replace it.
  $("#publish-btn").hidden = shown == null || (isLive && published === shown);
  const status = $("#live-status");
  status.hidden = live == null;
  if (live == null) return;
  if (isLive) {
    status.textContent = published === shown
      ? `Iteration ${shown} is published: predictions use it until you publish another.`
      : `Iteration ${shown} is live as the latest: publish it to keep it live after a retrain.`;
  } else {
    status.textContent = `Predictions use iteration ${live}${published === live ? " (published)" : " (the latest)"}; `
      + `publish iteration ${shown} to serve it instead.`;
  }
}

/** The publish button: POST …/iterations/<n>/publish for `current()`, then `onPublished(body)`. */
export function setupPublish(base, { current, onPublished }) {
  const button = $("#publish-btn");
  button.addEventListener("click", async () => {
    const number = current();
    if (number == null) return;
    button.disabled = true;
    try {
      const body = await api(`${base}/iterations/${encodeURIComponent(number)}/publish`, { method: "POST" });
      showAlert(`Iteration ${number} is live: predictions use it.`, { kind: "success", timeout: 5000 });
      onPublished(body);
    } catch (err) {
      reportError(err);
    } finally {
      button.disabled = false;
    }
  });
}
