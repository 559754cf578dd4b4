// The HTTP API client: /api/v1 with the session's bearer token.

const TOKEN_KEY = "dartwing_jobs.token";

export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details || {};
  }
}

export const session = {
  get token() { return sessionStorage.getItem(TOKEN_KEY); },
  set token(value) {
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
  },
  onUnauthorized: null,
};

export async function api(path, { method = "GET", query, body, token } = {}) {
  const url = new URL(`/api/v1${path}`, window.location.origin);
  for (const [key, value] of Object.entries(query || {})) {
    if (Array.isArray(value)) value.forEach((v) => url.searchParams.append(key, v));
    else if (value !== null && value !== undefined && value !== "") {
      url.searchParams.set(key, String(value));
    }
  }
  const headers = { Accept: "application/json" };
  const bearer = token ?? session.token;
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(url, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store", credentials: "omit",
    });
  } catch (err) {
    throw new ApiError(0, "network_error", `The server could not be reached (${err.message}).`);
  }
  let data = null;
  try { data = await response.json(); } catch { data = null; }
  if (!response.ok) {
    const e = (data && data.error) || {};
    const error = new ApiError(response.status, e.code || `http_${response.status}`,
      e.message || response.statusText || `HTTP ${response.status}`, e);
    if (response.status === 401 && !token && session.onUnauthorized) session.onUnauthorized(error);
    throw error;
  }
  return data;
}

/** Encode a path segment (job ids come from the server, but never trust them). */
export function seg(value) {
  return encodeURIComponent(String(value));
}
