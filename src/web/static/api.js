// The page's way to the HTTP API: the bearer token (kept in this browser's storage, never in a
// URL), and the API's errors as exceptions that say what went wrong and with which request.

const TOKEN_KEY = "isochat.token";

export const session = { token: localStorage.getItem(TOKEN_KEY) };

export function keepToken(token) {
  session.token = token;
  if (token) localStorage.setItem(TOKEN_KEY, token);
  else localStorage.removeItem(TOKEN_KEY);
}

export class ApiFailure extends Error {
  constructor(status, error, requestId) {
    super(error.message);
    this.status = status;
    this.code = error.code;
    this.details = error;
    this.requestId = requestId;
  }
}

export async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${session.token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 204) return null;
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = data.error || { code: "internal_error", message: response.statusText };
    throw new ApiFailure(response.status, error, response.headers.get("X-Request-ID"));
  }
  return data;
}

/** A failure in words: its code, message and request id. */
export function describe(failure) {
  if (failure instanceof ApiFailure) {
    const request = failure.requestId ? ` (request ${failure.requestId})` : "";
    return `${failure.code}: ${failure.message}${request}`;
  }
  return String(failure.message || failure);
}

/** Who a token is for (its `sub`), read without checking it: the server checks it. */
export function userOf(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(payload)).sub;
  } catch {
    return "?";
  }
}
