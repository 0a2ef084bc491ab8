// The one way the pages talk to the exchange: the same JSON API and WebSocket every program uses.
// A signed-in person authenticates with the session cookie (HttpOnly: this script never sees it) and
// sends the session's CSRF token on every state-changing request.

let csrfToken = "";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function setCsrf(token) {
  csrfToken = token || "";
}

export async function call(method, path, body) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["X-CSRF-Token"] = csrfToken;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const reply = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (reply.status === 204) return null;
  const type = reply.headers.get("Content-Type") || "";
  const payload = type.startsWith("application/json") ? await reply.json() : await reply.text();
  if (!reply.ok) {
    const code = payload && payload.code ? payload.code : `http_${reply.status}`;
    const message = payload && payload.message ? payload.message : String(payload);
    throw new ApiError(reply.status, code, message);
  }
  return payload;
}

export const get = (path) => call("GET", path);
export const post = (path, body) => call("POST", path, body);

// Public market data over one WebSocket: subscribe(channel, onMessage); reconnects after a drop.
export class Feed {
  constructor() {
    this.handlers = new Map();
    this.confirmed = new Map();
    this.socket = null;
    this.closed = false;
  }

  // `onSubscribed`, if given, runs each time the server confirms the subscription (again after a
  // reconnect): a page that fetched its state before then re-fetches it, so nothing that changed in
  // between (while no message could reach it) is missed.
  subscribe(channel, onMessage, onSubscribed = null) {
    this.handlers.set(channel, onMessage);
    if (onSubscribed) this.confirmed.set(channel, onSubscribed);
    this.open();
    if (this.socket && this.socket.readyState === WebSocket.OPEN) this.send({ op: "subscribe", channels: [channel] });
  }

  open() {
    if (this.socket || this.closed) return;
    const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/ws`;
    const socket = new WebSocket(url);
    this.socket = socket;
    socket.onopen = () => {
      if (this.handlers.size) this.send({ op: "subscribe", channels: [...this.handlers.keys()] });
    };
    socket.onmessage = (event) => {
      const message = JSON.parse(event.data);
      if (message.type === "result" && message.op === "subscribe") {
        for (const channel of message.data.channels) this.confirmed.get(channel)?.();
        return;
      }
      const handler = message.channel && this.handlers.get(message.channel);
      if (handler) handler(message);
    };
    socket.onclose = () => {
      this.socket = null;
      if (!this.closed) setTimeout(() => this.open(), 2000);
    };
  }

  send(message) {
    this.socket.send(JSON.stringify(message));
  }

  close() {
    this.closed = true;
    if (this.socket) this.socket.close();
  }
}
