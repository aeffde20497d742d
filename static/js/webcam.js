// The camera on "Test your model": classify live, and capture training images per class.
//
// Contract:
// - webcam(root, { base, titles, onCaptured }) builds the panel inside `root` and returns
//   { setTrained(on) }: live classification runs only once the project has an iteration
//   (setTrained(true)); capturing works at any time.
// - While the camera is on and the page is visible, a frame (JPEG, at most MAX_SIDE px on
//   its long side) goes to POST {base}/predict every FRAME_MS; never more than one request
//   is in flight (the next frame is taken only after the previous answer), and a 429 waits
//   its Retry-After. The answer is drawn with predictions.js, as for a dropped image.
// - Hiding the page (visibilitychange) or turning the camera off stops the loop and releases
//   the camera; showing the page again with the camera on starts both again.
// - "Capture" uploads the current frame as "camera-<time>.jpg" through POST {base}/images
//   with the chosen class and split=train, then calls onCaptured(body) (the upload report).
// - A denied, absent or busy camera, or a page served without HTTPS, is said in words.
import { api, reportError, showAlert } from "./api.js";
import { h, plural } from "./dom.js";
import { renderPrediction } from "./predictions.js";

const FRAME_MS = 300;
const MAX_SIDE = 640; // the backbones read 224–260 px: a larger frame only costs bandwidth
const JPEG_QUALITY = 0.9;

/** A sentence for a getUserMedia failure (a DOMException's name says which). */
export function cameraProblem(err) {
  switch (err && err.name) {
    case "NotAllowedError":
    case "SecurityError":
      return "Camera access was denied. Allow the camera for this site in the browser's address bar, then turn the camera on again.";
    case "NotFoundError":
    case "OverconstrainedError":
      return "No camera was found. Connect a camera, then turn it on again.";
    case "NotReadableError":
    case "AbortError":
      return "The camera could not be started: another application may be using it.";
    default:
      return `The camera could not be started: ${(err && err.message) || err}`;
  }
}

export function webcam(root, { base, titles = {}, onCaptured = () => {} }) {
  const video = h("video", { id: "camera-video", class: "camera-video", autoplay: true, muted: true, playsinline: true,
    "aria-label": "Camera view" });
  video.muted = true; // the attribute alone does not mute a stream in every browser
  const toggle = h("button", { type: "button", id: "camera-toggle", class: "btn", "aria-pressed": "false",
    "aria-controls": "camera-box", text: "Use camera" });
  const problem = h("p", { id: "camera-problem", class: "notice notice-warn", role: "alert", hidden: true });
  const status = h("p", { id: "camera-status", class: "muted camera-status", "aria-live": "polite" });
  const result = h("div", { id: "camera-result", class: "result-area camera-result", dataset: { frames: "0" } });
  const classes = h("datalist", { id: "camera-classes" });
  const label = h("input", { id: "camera-label", type: "text", maxlength: 100, autocomplete: "off",
    list: "camera-classes", placeholder: "e.g. cats", required: true });
  const capture = h("button", { type: "submit", id: "camera-capture", class: "btn btn-primary", text: "Capture" });
  const captured = h("p", { id: "camera-captured", class: "muted", "aria-live": "polite" });
  const form = h("form", { id: "capture-form", class: "capture-form" },
    h("label", { for: "camera-label", text: "Capture training images of class" }),
    h("div", { class: "capture-row" }, label, classes, capture),
    captured);
  const box = h("div", { id: "camera-box", class: "camera-box", hidden: true },
    h("div", { class: "camera-view" }, video),
    h("div", { class: "camera-side" }, status, result, form));
  root.replaceChildren(h("div", { class: "camera-head" }, toggle,
    h("span", { class: "muted", text: "Classify live from your camera, or capture training images with it." })),
  problem, box);

  const counts = new Map(); // class -> images captured in this page
  let stream = null;
  let wanted = false; // the user's toggle
  let trained = false;
  let timer = null;
  let inFlight = false;
  let generation = 0; // bumped on every stop: a late answer of an earlier run is dropped

  function say(text) { status.textContent = text; }

  function setProblem(text) {
    problem.textContent = text || "";
    problem.hidden = !text;
  }

  let starting = null; // the pending getUserMedia, so a quick off/on asks only once

  function start() {
    if (!starting) starting = open().finally(() => { starting = null; });
    return starting;
  }

  async function open() {
    if (stream) return;
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      // Browsers offer the camera only to secure pages (HTTPS, or localhost).
      throw Object.assign(new Error("this page is not served over HTTPS, so the browser offers no camera"),
        { name: "InsecureContext" });
    }
    const got = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 640 }, height: { ideal: 480 } }, audio: false });
    if (!wanted || document.hidden) { // turned off (or hidden) while the browser was asking
      got.getTracks().forEach((t) => t.stop());
      return;
    }
    stream = got;
    video.srcObject = stream;
    await video.play().catch(() => {}); // autoplay of a muted stream is allowed; play() may race it
  }

  function stop() {
    generation += 1;
    clearTimeout(timer);
    timer = null;
    if (stream) stream.getTracks().forEach((t) => t.stop());
    stream = null;
    video.srcObject = null;
  }

  /** The current frame as a JPEG Blob, scaled down to MAX_SIDE; null before the first frame. */
  function frame() {
    const w = video.videoWidth;
    const hgt = video.videoHeight;
    if (!stream || !w || !hgt) return Promise.resolve(null);
    const scale = Math.min(1, MAX_SIDE / Math.max(w, hgt));
    const canvas = document.createElement("canvas");
    canvas.width = Math.round(w * scale);
    canvas.height = Math.round(hgt * scale);
    canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height);
    return new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", JPEG_QUALITY));
  }

  function schedule(ms) {
    clearTimeout(timer);
    timer = setTimeout(tick, ms);
  }

  /** One frame: classify it, draw the answer, then schedule the next (never two at once:
   * a request of a stopped run still counts until it ends, and its answer is dropped). */
  async function tick() {
    timer = null;
    if (!stream || !trained || inFlight || document.hidden) return;
    const run = generation;
    const started = performance.now();
    inFlight = true;
    let wait = FRAME_MS;
    try {
      const blob = await frame();
      if (blob && run === generation) {
        const body = new FormData();
        body.append("file", blob, "camera.jpg");
        const answer = await api(`${base}/predict`, { method: "POST", form: body });
        if (run === generation) {
          renderPrediction(result, Array.isArray(answer.results) ? answer.results[0] : answer, { titles });
          result.dataset.frames = String(Number(result.dataset.frames) + 1);
          say(`Live: iteration ${answer.iteration ?? "latest"}, a frame every ${FRAME_MS / 1000} s`);
        }
      }
    } catch (err) {
      if (run === generation && err.status === 429) {
        wait = 1000 * Math.max(1, Number(err.body && err.body.retry_after) || 1);
        say(`Too many predictions: waiting ${Math.round(wait / 1000)} s.`);
      } else if (run === generation) {
        // Said once, in the panel and as an alert; the camera stays on for captures.
        say(`Live classification stopped: ${err.message}`);
        reportError(err);
        wait = null;
      }
    } finally {
      inFlight = false;
    }
    if (run !== generation) wait = 0; // stopped meanwhile: a restarted run goes on at once
    if (wait != null) schedule(Math.max(0, wait - (performance.now() - started)));
  }

  async function resume() {
    if (!wanted || document.hidden) return;
    try {
      await start();
    } catch (err) {
      wanted = false;
      render();
      setProblem(cameraProblem(err));
      return;
    }
    if (!stream) return;
    if (trained) {
      say("Live: starting…");
      if (!timer && !inFlight) schedule(0);
    } else {
      say("Train the project to classify live. You can capture training images now.");
    }
  }

  function render() {
    toggle.setAttribute("aria-pressed", String(wanted));
    toggle.textContent = wanted ? "Turn camera off" : "Use camera";
    box.hidden = !wanted;
  }

  toggle.addEventListener("click", () => {
    wanted = !wanted;
    setProblem("");
    render();
    if (wanted) {
      loadClasses();
      resume();
    } else {
      stop();
      say("");
    }
  });

  document.addEventListener("visibilitychange", () => {
    if (document.hidden) {
      stop();
      if (wanted) say("Paused while the page is hidden.");
    } else {
      resume();
    }
  });

  async function loadClasses() {
    try {
      fillClasses((await api(base)).classes);
    } catch (err) {
      reportError(err);
    }
  }

  function fillClasses(counted) {
    classes.replaceChildren(...Object.keys(counted || {}).sort().map((c) => h("option", { value: c })));
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const name = label.value.trim();
    if (!name) {
      label.focus();
      return;
    }
    const blob = await frame();
    if (!blob) {
      showAlert("No camera picture yet: turn the camera on first.");
      return;
    }
    capture.disabled = true;
    const body = new FormData();
    body.append("file", blob, `camera-${new Date().toISOString().replace(/[:.]/g, "-")}.jpg`);
    body.append("label", name);
    body.append("split", "train");
    try {
      const report = await api(`${base}/images`, { method: "POST", form: body });
      const added = typeof report.accepted === "number" ? report.accepted : (report.accepted || []).length;
      const stored = ((report.images || [])[0] || {}).label || name; // as the server normalised it
      if (added) counts.set(stored, (counts.get(stored) || 0) + 1);
      const total = (report.classes || {})[stored];
      captured.textContent = added
        ? `${plural(counts.get(stored), "image")} of ${stored} captured here`
          + (total != null ? ` · ${stored} has ${plural(total, "training image")}` : "")
        : `That frame is already in the project (${stored}); nothing added.`;
      fillClasses(report.classes);
      onCaptured(report);
    } catch (err) {
      reportError(err);
    } finally {
      capture.disabled = false;
    }
  });

  return {
    /** Whether the project has an iteration to classify with. */
    setTrained(on) {
      trained = on;
      if (!on) {
        clearTimeout(timer);
        timer = null;
        result.replaceChildren();
      }
      if (stream) resume();
    },
  };
}
