// The browser client of the hub's real-time envelope (hub/envelope.py).
//
// A plain ES module: no build step, no dependencies. Every app's pages use it:
//
//   import { HubSocket } from "/static/hub/js/realtime.js";
//   const hub = new HubSocket("/ws/live/", {
//     onEvent: (frame) => render(frame),      // {topic, seq, time, type, data}
//     onGap: (topics) => reloadState(topics), // events were lost: reload from HTTP
//     onRevoked: (topics) => askAgain(topics), // a grant expired: the server left these
//     onState: (state, detail) => showBanner(state),
//   });
//   await hub.subscribe(["public.alerts"]);
//
// What it guarantees: each topic event reaches onEvent once and in seq order,
// across reconnects; a lost connection is noticed (heartbeat watchdog) and
// re-established with backoff; on return the server replays what was missed
// (resume), and where it cannot, onGap says so. It reconnects after any close
// (1001, 1006, 1011, 1012, 1013, 4013...) except 4001 and 4003, where trying
// again cannot help: then the state becomes "closed" with `fatal: true`.

/** Close codes of the hub (hub.envelope.CloseCode). */
export const CloseCode = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  ABNORMAL: 1006, // set by the browser: the connection dropped without a close frame
  MESSAGE_TOO_BIG: 1009,
  INTERNAL_ERROR: 1011,
  SERVICE_RESTART: 1012,
  TRY_AGAIN_LATER: 1013,
  UNAUTHENTICATED: 4001,
  FORBIDDEN: 4003,
  RATE_LIMITED: 4008,
  TOO_SLOW: 4013,
  TOO_MANY_CONNECTIONS: 4029,
});

// Reconnecting cannot help: the user must sign in again or was removed.
const FATAL_CLOSE_CODES = new Set([CloseCode.UNAUTHENTICATED, CloseCode.FORBIDDEN]);
// The server asked us to back off: start the backoff further along.
const SLOW_DOWN_CLOSE_CODES = new Set([CloseCode.RATE_LIMITED, CloseCode.TOO_MANY_CONNECTIONS]);
// The server refuses more topics than this per subscribe message.
const MAX_TOPICS_PER_MESSAGE = 50;

/** An error reply, a timeout or a lost connection; `code` is machine-readable. */
export class HubError extends Error {
  constructor(code, message, detail) {
    super(message);
    this.name = "HubError";
    this.code = code;
    if (detail !== undefined) this.detail = detail;
  }
}

const noop = () => {};

// A failing page callback must not break the socket; rethrow it outside our
// stack so it still shows up as an uncaught error in the console.
function safely(callback, ...args) {
  try {
    callback(...args);
  } catch (error) {
    setTimeout(() => {
      throw error;
    });
  }
}

/** An absolute ws(s):// URL from a ws(s)://, http(s):// or relative URL. */
export function socketUrl(url) {
  const base = typeof location === "undefined" ? undefined : location.href;
  const absolute = new URL(url, base);
  if (absolute.protocol === "http:") absolute.protocol = "ws:";
  else if (absolute.protocol === "https:") absolute.protocol = "wss:";
  return absolute.href;
}

export class HubSocket {
  /**
   * @param {string} url  "/ws/live/" (resolved against the page) or a ws(s):// URL.
   * @param {object} options
   *   onEvent(frame)          each topic event, once, in seq order per topic
   *   onState(state, detail)  "connecting"   {attempt}
   *                           "open"         {session, resumed, replayed, gap}
   *                           "reconnecting" {code, reason, delay, attempt}
   *                           "closed"       {code, reason, fatal}
   *   onGap(topics)           these topics lost events: reload their state
   *   onMessage(message)      other server messages without a request id
   *   onError(error)          errors not tied to a request (HubError)
   *   requestTimeout          ms before a request rejects with code "timeout" (15000)
   *   connectTimeout          ms to get the server's welcome (20000)
   *   minDelay, maxDelay      reconnect backoff bounds in ms (500, 30000)
   *   connect                 false to wait for an explicit connect() (true)
   */
  constructor(url, options = {}) {
    this.url = socketUrl(url);
    this.onEvent = options.onEvent || noop;
    this.onState = options.onState || noop;
    this.onGap = options.onGap || noop;
    this.onMessage = options.onMessage || noop;
    this.onRevoked = options.onRevoked || noop;
    this.onError = options.onError || noop;
    this.requestTimeout = options.requestTimeout ?? 15000;
    this.connectTimeout = options.connectTimeout ?? 20000;
    this.minDelay = options.minDelay ?? 500;
    this.maxDelay = options.maxDelay ?? 30000;

    this.state = "idle";
    this.session = null;
    this._ws = null;
    this._heartbeat = 25; // seconds; the welcome gives the real value
    this._resumeToken = null;
    this._wanted = new Set(); // topics the page asked for; events of others are dropped
    this._topics = new Map(); // topic -> grant, confirmed by the server (restored on reconnect)
    this._seqs = new Map(); // topic -> last seq delivered
    this._pending = new Map(); // request id -> entry, sent on the current socket
    this._queue = []; // entries waiting for the socket to be open
    this._nextId = 0;
    this._idPrefix = Math.random().toString(36).slice(2, 8);
    this._attempt = 0;
    this._openedAt = 0;
    this._retryTimer = null;
    this._watchdog = null;
    this._lastHeard = 0;
    this._welcomed = false;
    this._final = false;

    this._onOnline = () => this._networkBack();
    this._onVisible = () => {
      if (document.visibilityState === "visible") this._checkHeartbeat();
    };
    if (typeof window !== "undefined") window.addEventListener("online", this._onOnline);
    if (typeof document !== "undefined") {
      document.addEventListener("visibilitychange", this._onVisible);
    }
    if (options.connect !== false) this.connect();
  }

  // --- Public API -------------------------------------------------------------

  /** Open the connection (done by the constructor unless connect: false). */
  connect() {
    if (this._final || this._ws) return;
    this._clearRetry();
    this._open(this.state === "idle" ? "connecting" : "reconnecting");
  }

  /**
   * Send a request; resolves with the reply of the same id, rejects with a
   * HubError (`code` from the error reply, "timeout" or "disconnected").
   * Requests made before the connection is open wait for it. A request already
   * sent when the connection drops is rejected ("disconnected"): the server may
   * or may not have acted on it, so only the page can decide to repeat it -
   * except with `retry: true`, for idempotent requests, which are sent again.
   */
  request(message, { timeout = this.requestTimeout, retry = false } = {}) {
    const make = typeof message === "function" ? message : () => message;
    return new Promise((resolve, reject) => {
      if (this._final) {
        reject(new HubError("disconnected", "The connection is closed."));
        return;
      }
      const entry = { id: this._newId(), make, resolve, reject, retry };
      entry.timer = setTimeout(() => {
        this._forget(entry);
        reject(new HubError("timeout", `No reply within ${timeout} ms.`));
      }, timeout);
      if (this.state === "open") this._send(entry);
      else this._queue.push(entry);
    });
  }

  /** Round trip to the server; resolves with the pong. */
  ping(options) {
    return this.request({ type: "ping" }, options);
  }

  /**
   * Subscribe to topics. `grant` is the signed grant for non-public topics, or
   * a function returning one (or a Promise of one), called again on every
   * re-subscribe so that an expired grant can be refreshed. Resolves with the
   * `subscribed` reply. The topics stay subscribed across reconnects.
   */
  subscribe(topics, { grant = null } = {}) {
    topics = [...new Set(topics)];
    for (const topic of topics) this._wanted.add(topic);
    // Built when (re)sent, so `since` is current; idempotent, so kept across drops.
    const make = () => this._subscribeMessage(topics, grant);
    return this.request(make, { retry: true }).then(
      (reply) => {
        // Unless the page unsubscribed meanwhile, restore these on reconnect.
        for (const topic of topics) if (this._wanted.has(topic)) this._topics.set(topic, grant);
        return reply;
      },
      (error) => {
        for (const topic of topics) if (!this._topics.has(topic)) this._wanted.delete(topic);
        throw error;
      },
    );
  }

  /** Leave topics; no more events of them reach onEvent from now on. */
  unsubscribe(topics) {
    topics = [...new Set(topics)];
    for (const topic of topics) {
      this._wanted.delete(topic);
      this._topics.delete(topic);
      this._seqs.delete(topic);
    }
    return this.request({ type: "unsubscribe", topics }, { retry: true });
  }

  /** The last seq delivered for a topic (undefined before any). */
  lastSeq(topic) {
    return this._seqs.get(topic);
  }

  /** Close for good: no reconnect; pending requests reject with "disconnected". */
  close() {
    if (this._final) return;
    const ws = this._detach();
    if (ws) ws.close(CloseCode.NORMAL);
    this._end({ code: CloseCode.NORMAL, reason: "closed by the page", fatal: false });
  }

  // --- Connection life cycle ------------------------------------------------------

  // For good: nothing reconnects, every request still waiting fails.
  _end(detail) {
    this._final = true;
    this._clearRetry();
    if (typeof window !== "undefined") window.removeEventListener("online", this._onOnline);
    if (typeof document !== "undefined") {
      document.removeEventListener("visibilitychange", this._onVisible);
    }
    this._rejectAll(new HubError("disconnected", detail.reason || "The connection was closed."));
    this._setState("closed", detail);
  }

  _open(state) {
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (error) {
      // A malformed URL or a page policy that forbids it: retrying cannot help.
      this._end({ code: 0, reason: String(error), fatal: true });
      return;
    }
    this._ws = ws;
    this._welcomed = false;
    ws.onmessage = (event) => this._receive(event.data);
    ws.onclose = (event) => this._lost(event.code, event.reason);
    // onerror is always followed by onclose, which does the work.
    this._heard();
    this._armWatchdog(this.connectTimeout);
    if (state !== this.state) this._setState(state, { attempt: this._attempt });
  }

  // Stop listening to the current socket. We never wait for a close handshake:
  // on a dead network it can take minutes, and nothing it says matters to us.
  _detach() {
    const ws = this._ws;
    this._ws = null;
    clearTimeout(this._watchdog);
    this._watchdog = null;
    if (ws) {
      ws.onmessage = null;
      ws.onclose = null;
    }
    return ws;
  }

  // Drop the current connection ourselves (silent server, failed restore).
  _drop(reason) {
    const ws = this._detach();
    if (!ws) return;
    try {
      ws.close(4000, reason.slice(0, 120));
    } catch {
      // Closing a socket that never opened can throw; it is gone either way.
    }
    this._lost(CloseCode.ABNORMAL, reason, true);
  }

  _lost(code, reason, detached = false) {
    if (!detached) this._detach();
    const wasOpen = this.state === "open";
    this._requeueOrReject();
    if (this._final) return;
    if (FATAL_CLOSE_CODES.has(code)) {
      // The page should tell the user (sign in again, or no longer allowed).
      this._end({ code, reason, fatal: true });
      return;
    }
    // A connection that stayed up a while was healthy: start the backoff over.
    // One that drops right after opening keeps growing the delay (a crash loop).
    if (wasOpen && Date.now() - this._openedAt > 10000) this._attempt = 0;
    if (SLOW_DOWN_CLOSE_CODES.has(code)) this._attempt = Math.max(this._attempt, 4);
    // Exponential backoff with full jitter: after a server restart thousands of
    // clients come back spread over the window instead of all at once.
    const ceiling = Math.min(this.maxDelay, this.minDelay * 2 ** this._attempt);
    const delay = Math.round(Math.random() * ceiling);
    this._attempt += 1;
    this._retryTimer = setTimeout(() => {
      this._retryTimer = null;
      this._open("reconnecting");
    }, delay);
    this._setState("reconnecting", { code, reason, delay, attempt: this._attempt });
  }

  _clearRetry() {
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
  }

  // The phone got its network back: try now instead of waiting out the backoff,
  // and check that an "open" socket survived the switch (it often has not).
  _networkBack() {
    if (this._final) return;
    if (this._retryTimer !== null) {
      this._clearRetry();
      this._attempt = 0;
      this._open("reconnecting");
    } else if (this.state === "open") {
      this.ping({ timeout: 5000 }).catch((error) => {
        if (error.code === "timeout") this._drop("no reply after the network came back");
      });
    }
  }

  // --- Heartbeat watchdog -----------------------------------------------------------

  // The server pings every `heartbeat` s; silence for twice that (plus slack)
  // means the connection is dead even if the browser has not noticed - typical
  // of mobile networks, where the TCP connection dies without a FIN.
  _heard() {
    this._lastHeard = Date.now();
  }

  _silenceLimit() {
    return (2 * this._heartbeat + 5) * 1000;
  }

  _armWatchdog(ms) {
    clearTimeout(this._watchdog);
    this._watchdog = setTimeout(() => this._checkHeartbeat(), ms);
  }

  // One timer re-armed lazily, rather than reset on every frame.
  _checkHeartbeat() {
    if (!this._ws) return;
    const limit = this._welcomed ? this._silenceLimit() : this.connectTimeout;
    const silent = Date.now() - this._lastHeard;
    if (silent >= limit) this._drop(this._welcomed ? "heartbeat timeout" : "connect timeout");
    else this._armWatchdog(limit - silent);
  }

  // --- Incoming frames ------------------------------------------------------------------

  _receive(text) {
    this._heard();
    let message;
    try {
      message = JSON.parse(text);
    } catch {
      this._report(new HubError("bad_json", "The server sent a frame that is not JSON."));
      return;
    }
    if (message === null || typeof message !== "object") return;
    if (typeof message.topic === "string" && typeof message.seq === "number") {
      this._deliver(message);
      return;
    }
    const type = message.type;
    if (type === "welcome") {
      this._welcome(message);
      return;
    }
    if (message.id != null) {
      // Only replies carry an id; one nobody waits for any more (timed out) is dropped.
      if (this._pending.has(message.id)) this._reply(message);
      return;
    }
    if (type === "ping") return; // the server heartbeat: hearing it was the point
    if (type === "unsubscribed") {
      // Without an id it is the server's decision: the grant that allowed these
      // topics expired. Forget them, or a reconnect would ask again in vain.
      const topics = Array.isArray(message.topics) ? message.topics : [];
      for (const topic of topics) {
        this._wanted.delete(topic);
        this._topics.delete(topic);
        this._seqs.delete(topic);
      }
      safely(this.onRevoked, topics);
      return;
    }
    if (type === "error") {
      this._report(new HubError(message.code, message.message, message));
      return;
    }
    safely(this.onMessage, message);
  }

  // Once and in order per topic: replays after a reconnect can overlap what we
  // already have, so anything at or below the last seq seen is a duplicate.
  _deliver(frame) {
    if (!this._wanted.has(frame.topic)) return;
    const last = this._seqs.get(frame.topic);
    if (last !== undefined && frame.seq <= last) return;
    // A jump means events were lost on the way (Redis lost them, or more were
    // missed than the buffer holds): deliver this one, and say so. 0 is "no
    // event yet": a topic's first number is large, not 1.
    if (last !== undefined && last !== 0 && frame.seq > last + 1) {
      safely(this.onGap, [frame.topic]);
    }
    this._seqs.set(frame.topic, frame.seq);
    safely(this.onEvent, frame);
  }

  _reply(message) {
    const entry = this._pending.get(message.id);
    this._forget(entry);
    if (message.type === "error") {
      entry.reject(new HubError(message.code, message.message, message));
      return;
    }
    if (message.type === "subscribed" || message.type === "resumed") {
      this._baseline(message, entry.sent);
    }
    entry.resolve(message);
  }

  // Record the server's seq of each topic so that a reconnect before the first
  // event still asks for what was published meanwhile. Replayed frames come
  // before the reply, so taking the larger value loses nothing. A topic whose
  // seq is below the `since` we sent was reset on the server (its counter
  // expired or Redis lost it): follow it, or we would drop its new events.
  _baseline(reply, sent) {
    const gap = new Set(reply.gap || []);
    const since = (sent && sent.since) || {};
    for (const [topic, seq] of Object.entries(reply.topics || {})) {
      if (!this._wanted.has(topic)) continue;
      const last = this._seqs.get(topic);
      const reset = gap.has(topic) && since[topic] !== undefined && seq < since[topic];
      if (last === undefined || seq > last || reset) this._seqs.set(topic, seq);
    }
    if (gap.size) safely(this.onGap, [...gap]);
  }

  async _welcome(welcome) {
    const ws = this._ws;
    this._welcomed = true;
    this.session = welcome.session;
    if (typeof welcome.heartbeat === "number" && welcome.heartbeat > 0) {
      this._heartbeat = welcome.heartbeat;
    }
    this._checkHeartbeat();
    let detail;
    try {
      detail = await this._restore(welcome);
    } catch (error) {
      // Timed out or refused (internal, rate_limited...): try again on a new
      // connection, with backoff. If this socket is already gone, so is the job.
      if (ws === this._ws) this._drop(`restore failed: ${error.code || error.message}`);
      return;
    }
    if (ws !== this._ws) return;
    this._openedAt = Date.now();
    // What the page asked for while we were away goes out after the restore,
    // so that its requests see the topics as they were.
    for (const entry of this._queue.splice(0)) this._send(entry);
    this._setState("open", { session: this.session, ...detail });
  }

  // Bring the server back to the topics we had: `resume` the old session (the
  // server replays each topic's missed events before its reply), or, if the
  // session is gone, subscribe again with `since`, which replays just the same
  // while the topic buffers still hold the events.
  async _restore(welcome) {
    const oldToken = this._resumeToken;
    this._resumeToken = welcome.resume_token;
    if (this._topics.size === 0) return { resumed: false, replayed: 0, gap: [] };
    if (oldToken) {
      try {
        const resumed = await this._direct({
          type: "resume",
          token: oldToken,
          since: this._since([...this._topics.keys()]),
        });
        this.session = resumed.session;
        this._resumeToken = resumed.resume_token;
        const onServer = new Set(Object.keys(resumed.topics));
        const missing = [...this._topics.keys()].filter((t) => !onServer.has(t));
        const extra = [...onServer].filter((t) => !this._wanted.has(t));
        const again = await this._resubscribe(missing);
        if (extra.length) this._direct({ type: "unsubscribe", topics: extra }).catch(noop);
        return {
          resumed: true,
          replayed: resumed.replayed + again.replayed,
          gap: [...resumed.gap, ...again.gap],
        };
      } catch (error) {
        if (error.code === "timeout" || error.code === "disconnected") throw error;
        // resume_expired (or an endpoint without resume): subscribe afresh below.
      }
    }
    return { resumed: false, ...(await this._resubscribe([...this._topics.keys()])) };
  }

  async _resubscribe(topics) {
    const byGrant = new Map();
    for (const topic of topics) {
      const grant = this._topics.get(topic);
      if (!byGrant.has(grant)) byGrant.set(grant, []);
      byGrant.get(grant).push(topic);
    }
    let replayed = 0;
    const gap = [];
    for (const [grant, group] of byGrant) {
      const token = typeof grant === "function" ? await grant() : grant;
      for (let i = 0; i < group.length; i += MAX_TOPICS_PER_MESSAGE) {
        const chunk = group.slice(i, i + MAX_TOPICS_PER_MESSAGE);
        try {
          const reply = await this._direct(this._subscribeMessage(chunk, token));
          replayed += reply.replayed;
          gap.push(...reply.gap);
        } catch (error) {
          if (error.code !== "forbidden") throw error;
          // The grant no longer covers these topics: stop following them.
          for (const topic of chunk) {
            this._topics.delete(topic);
            this._wanted.delete(topic);
            this._seqs.delete(topic);
          }
          this._report(new HubError(error.code, error.message, { topics: chunk }));
        }
      }
    }
    return { replayed, gap };
  }

  _subscribeMessage(topics, grant) {
    const message = { type: "subscribe", topics };
    const since = this._since(topics);
    if (Object.keys(since).length) message.since = since;
    if (grant) message.grant = grant;
    return message;
  }

  _since(topics) {
    const since = {};
    for (const topic of topics) {
      const seq = this._seqs.get(topic);
      if (seq !== undefined) since[topic] = seq;
    }
    return since;
  }

  // --- Requests ---------------------------------------------------------------------------

  _newId() {
    this._nextId += 1;
    return `${this._idPrefix}-${this._nextId}`;
  }

  // A request on the current socket, bypassing the queue (used while restoring).
  _direct(message) {
    return new Promise((resolve, reject) => {
      const entry = { id: this._newId(), make: () => message, resolve, reject, direct: true };
      entry.timer = setTimeout(() => {
        this._forget(entry);
        reject(new HubError("timeout", "No reply while restoring the connection."));
      }, this.requestTimeout);
      this._send(entry);
    });
  }

  _send(entry) {
    if (!this._ws || this._ws.readyState !== WebSocket.OPEN) {
      this._notSent(entry);
      return;
    }
    const message = entry.make();
    if (typeof message.grant === "function") {
      // A grant given as a function is fetched on every send: it may have expired.
      Promise.resolve()
        .then(message.grant)
        .then(
          (grant) => this._transmit(entry, { ...message, grant }),
          (error) => {
            this._forget(entry);
            entry.reject(new HubError("grant", `Could not get a grant: ${error}`));
          },
        );
      return;
    }
    this._transmit(entry, message);
  }

  _transmit(entry, message) {
    if (entry.done) return;
    if (!this._ws || this._ws.readyState !== WebSocket.OPEN) {
      this._notSent(entry);
      return;
    }
    entry.sent = message;
    this._pending.set(entry.id, entry);
    this._ws.send(JSON.stringify({ ...message, id: entry.id }));
  }

  // The socket died before the send: a page request waits for the next one; a
  // restore step belongs to the dead connection and fails with it.
  _notSent(entry) {
    if (!entry.direct) {
      this._queue.push(entry);
      return;
    }
    entry.done = true;
    clearTimeout(entry.timer);
    entry.reject(new HubError("disconnected", "The connection was lost."));
  }

  _forget(entry) {
    entry.done = true;
    clearTimeout(entry.timer);
    this._pending.delete(entry.id);
    const index = this._queue.indexOf(entry);
    if (index >= 0) this._queue.splice(index, 1);
  }

  // On a lost connection: idempotent requests wait for the next one, the rest fail.
  _requeueOrReject() {
    const lost = [...this._pending.values()];
    this._pending.clear();
    for (const entry of lost) {
      if (entry.retry && !this._final) {
        this._queue.push(entry);
      } else {
        entry.done = true;
        clearTimeout(entry.timer);
        entry.reject(new HubError("disconnected", "The connection was lost before the reply."));
      }
    }
  }

  _rejectAll(error) {
    for (const entry of [...this._pending.values(), ...this._queue.splice(0)]) {
      entry.done = true;
      clearTimeout(entry.timer);
      entry.reject(error);
    }
    this._pending.clear();
  }

  _report(error) {
    safely(this.onError, error);
  }

  _setState(state, detail = {}) {
    this.state = state;
    safely(this.onState, state, detail);
  }
}
