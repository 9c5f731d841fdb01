// The page's WebSocket to `/ws`: opened with a single-use ticket (`POST /api/auth/ws-ticket`),
// so that no URL carries the token, and opened again after a growing pause whenever it closes
// while one is signed in. Its frames are the events of every run of the user, and the errors
// of the frames the page sent.

const FIRST_BACKOFF_MS = 500;
const MAX_BACKOFF_MS = 10000;

/**
 * `api` is the page's way to the HTTP API; `signedIn()` whether to (re)connect;
 * `opened(reconnected)`, `received(frame)` and `closed()` are told what happens;
 * `unauthorized()` when the token is refused (HTTP 401, or the socket's close code 4401).
 */
export function liveSocket({ api, signedIn, opened, received, closed, unauthorized }) {
  let socket = null;
  let backoffMs = FIRST_BACKOFF_MS;
  let connections = 0; // sockets opened so far

  async function connect() {
    if (!signedIn()) return;
    let ticket;
    try {
      ticket = (await api("POST", "/api/auth/ws-ticket")).ticket;
    } catch (failure) {
      if (failure.status === 401) return unauthorized();
      return reconnectLater();
    }
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const opening = new WebSocket(`${scheme}://${location.host}/ws?ticket=${encodeURIComponent(ticket)}`);
    socket = opening;
    const reconnected = connections++ > 0;
    opening.addEventListener("open", () => {
      backoffMs = FIRST_BACKOFF_MS;
      opened(reconnected);
    });
    opening.addEventListener("message", (message) => received(JSON.parse(message.data)));
    opening.addEventListener("close", (close) => {
      if (socket === opening) socket = null;
      closed();
      if (close.code === 4401) return unauthorized();
      if (signedIn()) reconnectLater();
    });
  }

  function reconnectLater() {
    setTimeout(connect, backoffMs);
    backoffMs = Math.min(backoffMs * 2, MAX_BACKOFF_MS);
  }

  return {
    connect,
    /** Whether there is a socket, open or opening. */
    exists: () => socket !== null,
    isOpen: () => socket !== null && socket.readyState === WebSocket.OPEN,
    send: (frame) => socket.send(JSON.stringify(frame)),
    close: () => socket && socket.close(1000),
  };
}
