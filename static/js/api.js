// The JSON API client: fetch for JSON calls, XMLHttpRequest for uploads (upload progress).
// Calls go with the session cookie; state-changing ones carry the page's CSRF token.
import { h } from "./dom.js";

export const API = "/api/v1";

const SAFE_METHODS = ["GET", "HEAD", "OPTIONS"];

function csrfToken() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.content : "";
}

/** The session is gone (logged out, password changed): go to the login page, then back here. */
function toLogin() {
  window.location.assign(`/login?next=${encodeURIComponent(window.location.pathname + window.location.search)}`);
}

export class ApiError extends Error {
  constructor(message, status = 0, body = null) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

function errorMessage(status, statusText, body, text) {
  if (body && typeof body === "object" && body.error) return String(body.error);
  if (status === 413) return "The upload is too large for the server.";
  if (text && text.length < 200 && !text.trimStart().startsWith("<")) return text.trim();
  return `Request failed: ${status} ${statusText || ""}`.trim();
}

function parseBody(text, contentType) {
  if (!text) return null;
  if ((contentType || "").includes("json")) {
    try { return JSON.parse(text); } catch { return null; }
  }
  return null;
}

/** Call the API; resolves to the parsed JSON, rejects with ApiError carrying the server's message. */
export async function api(path, { method = "GET", json, form, signal } = {}) {
  const options = { method, signal, headers: { Accept: "application/json" } };
  if (!SAFE_METHODS.includes(method.toUpperCase())) options.headers["X-CSRFToken"] = csrfToken();
  if (json !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(json);
  } else if (form) {
    options.body = form;
  }
  let response;
  try {
    response = await fetch(API + path, options);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError("Cannot reach the server. Is it running?");
  }
  if (response.status === 401) toLogin();
  const text = await response.text();
  const body = parseBody(text, response.headers.get("content-type"));
  if (!response.ok) {
    throw new ApiError(errorMessage(response.status, response.statusText, body, text), response.status, body);
  }
  return body;
}

/** POST a FormData with upload progress: onProgress(fraction 0..1, loaded, total). */
export function upload(path, form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", API + path);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.setRequestHeader("X-CSRFToken", csrfToken());
    xhr.upload.addEventListener("progress", (e) => {
      if (onProgress && e.lengthComputable) onProgress(e.loaded / e.total, e.loaded, e.total);
    });
    xhr.upload.addEventListener("load", () => onProgress && onProgress(1, 1, 1));
    xhr.addEventListener("load", () => {
      const body = parseBody(xhr.responseText, xhr.getResponseHeader("content-type"));
      if (xhr.status === 401) toLogin();
      if (xhr.status >= 200 && xhr.status < 300) resolve(body);
      else reject(new ApiError(errorMessage(xhr.status, xhr.statusText, body, xhr.responseText), xhr.status, body));
    });
    xhr.addEventListener("error", () => reject(new ApiError("The upload failed: the server could not be reached.")));
    xhr.addEventListener("abort", () => reject(new ApiError("The upload was cancelled.")));
    xhr.send(form);
  });
}

let thumbnailPattern = `${API}/images/{sha256}/thumbnail`;

/** Set the thumbnail URL pattern from an API answer that carries one (e.g. "/api/v1/images/<sha>/thumbnail"). */
export function learnThumbnailUrl(sha256, url) {
  if (sha256 && url && url.includes(sha256)) thumbnailPattern = url.replace(sha256, "{sha256}");
}

export function thumbnailUrl(sha256) {
  return thumbnailPattern.replace("{sha256}", encodeURIComponent(sha256));
}

// ---- the visible alert area -------------------------------------------------------------

export function showAlert(message, { kind = "error", details = [], timeout = 0 } = {}) {
  const area = document.getElementById("alerts");
  if (!area) return null;
  const box = h("div", { class: `alert alert-${kind}`, role: kind === "error" ? "alert" : "status" },
    h("div", { class: "alert-body" },
      h("p", { class: "alert-message", text: message }),
      details.length ? h("ul", { class: "alert-details" }, details.map((d) => h("li", { text: d }))) : null),
    h("button", { type: "button", class: "alert-close", "aria-label": "Dismiss", text: "×",
      onclick: () => box.remove() }));
  area.prepend(box);
  if (timeout) setTimeout(() => box.remove(), timeout);
  return box;
}

export function reportError(err) {
  if (err && err.name === "AbortError") return;
  console.error(err);
  showAlert(err instanceof ApiError ? err.message : `Something went wrong: ${err && err.message ? err.message : err}`);
}
