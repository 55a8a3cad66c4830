// The public HTTP API, as the console reads it: the base address (index.html's meta, or ?api=), the API's
// Basic auth (asked once, kept for the tab's session), and get/post/del returning the decoded JSON.

const meta = document.querySelector('meta[name="nonstop-api"]')?.content ?? "";
const override = new URLSearchParams(location.search).get("api");

export const base = override ? override.replace(/\/+$/, "")
  : meta.startsWith(":") ? `${location.protocol}//${location.hostname}${meta}`
  : meta === "none" ? null : "";

const KEY = "nonstop-console-auth";

export class AuthNeeded extends Error {}

export function setCredentials(user, password) {
  sessionStorage.setItem(KEY, btoa(`${user}:${password}`));
}

async function call(method, path) {
  if (base === null) throw new Error("the HTTP API is disabled (http_api.enabled off)");
  const headers = {};
  const token = sessionStorage.getItem(KEY);
  if (token) headers.Authorization = `Basic ${token}`;
  const response = await fetch(base + path, { method, headers, cache: "no-store", credentials: "omit" });
  if (response.status === 401) throw new AuthNeeded("the API needs a user name and password");
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `${method} ${path}: HTTP ${response.status}`);
  if (body.code) throw new Error(`${method} ${path}: error code ${body.code}`);
  return body;
}

export const get = (path) => call("GET", path);
export const post = (path) => call("POST", path);
export const del = (path) => call("DELETE", path);
