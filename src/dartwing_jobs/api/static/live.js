// Live updates: Socket.IO at /socket.io when the server offers it, else the
// views poll (no faster than every POLL_MS). Events: job_progress, job_status.

export const POLL_MS = 4000;

class Live {
  constructor() {
    this.socket = null;
    this.mode = "off"; // off | connecting | live | polling
    this.organizations = [];
    this.lastEventId = new Map(); // organization -> last event_id seen
    this.listeners = new Set();
    this.modeListeners = new Set();
  }

  start(token, organizations) {
    this.stop();
    this.organizations = organizations.slice();
    if (typeof window.io !== "function") {
      this.setMode("polling");
      return;
    }
    this.setMode("connecting");
    const socket = window.io({
      path: "/socket.io",
      auth: { token },
      reconnectionDelay: 2000,
      reconnectionDelayMax: 30000,
      timeout: 8000,
    });
    this.socket = socket;
    socket.on("connect", () => this.subscribeAll());
    socket.on("disconnect", () => this.setMode("polling"));
    socket.on("connect_error", () => this.setMode("polling"));
    socket.on("job_progress", (event) => this.dispatch("job_progress", event));
    socket.on("job_status", (event) => this.dispatch("job_status", event));
  }

  subscribeAll() {
    const socket = this.socket;
    if (!socket) return;
    let pending = this.organizations.length;
    let subscribed = 0;
    if (!pending) { this.setMode("live"); return; }
    for (const organization of this.organizations) {
      const payload = { organization };
      if (this.lastEventId.has(organization)) payload.since = this.lastEventId.get(organization);
      socket.timeout(8000).emit("subscribe", payload, (err, ack) => {
        pending -= 1;
        if (!err && ack && ack.ok) subscribed += 1;
        if (pending === 0) this.setMode(subscribed > 0 ? "live" : "polling");
      });
    }
  }

  stop() {
    if (this.socket) {
      this.socket.removeAllListeners();
      this.socket.disconnect();
    }
    this.socket = null;
    this.lastEventId.clear();
    this.setMode("off");
  }

  dispatch(kind, event) {
    if (!event || typeof event !== "object") return;
    // Defence in depth: the server only sends our rooms, but never show others'.
    if (!this.organizations.includes(event.organization)) return;
    if (event.event_id !== undefined && event.event_id !== null) {
      this.lastEventId.set(event.organization, event.event_id);
    }
    for (const fn of this.listeners) {
      try { fn(kind, event); } catch (err) { console.error(err); }
    }
  }

  on(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  onMode(fn) {
    this.modeListeners.add(fn);
    fn(this.mode);
    return () => this.modeListeners.delete(fn);
  }

  setMode(mode) {
    if (this.mode === mode) return;
    this.mode = mode;
    for (const fn of this.modeListeners) fn(mode);
  }

  get isLive() { return this.mode === "live"; }
}

export const live = new Live();
