// The meeting's media through the hub's forwarding unit (an SFU), once the
// room outgrew the mesh or a setting asks for it: our microphone and camera go
// up once, on one send-only connection (the publication), and each other
// participant who sends comes down on a receive-only connection of its own (a
// subscription). The page offers and the server answers with all of its
// candidates (it does not trickle), so an offer leaves only once ICE gathering
// has completed. A connection that fails (a media worker died and the server
// placed the room again, the network changed) is negotiated again, with
// growing pauses. When the server tells us that a media worker is gone (the
// notice media_reconnect), the connections that were on it take that same
// path at once, without waiting to fail: the publication first, the
// subscriptions after the first pause (by then the others have published
// again; their new publications also make new subscriptions, see meet.js).
// Plain ES module, no build step; the messages are sfu_publish /
// sfu_subscribe / sfu_close (signaling/protocol.py).

import { capBitrate } from "./peer.js";

// How long to wait for ICE gathering before offering what there is.
const GATHER_MAX_MS = 3000;
// Pauses between attempts: from RETRY_FIRST_MS, doubling, at most RETRY_MAX_MS.
const RETRY_FIRST_MS = 500;
const RETRY_MAX_MS = 10000;
// An answered connection that is not connected after this is tried again…
const CONNECT_MAX_MS = 15000;
// …and so is one that stays "disconnected" this long (consent lost).
const DISCONNECTED_MAX_MS = 5000;
// One upload, which the server forwards to everyone: more than a mesh's share.
const VIDEO_MAX_BITRATE = 900_000;
// Refusals another attempt cannot change: the page starts again when the room
// says so (given the floor, the room back on the forwarding unit).
const FINAL = new Set(["forbidden", "gone", "conflict", "unauthenticated"]);
const KINDS = ["audio", "video"];

function gathered(pc, maxMs) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", check);
      resolve();
    };
    const check = () => {
      if (pc.iceGatheringState === "complete") done();
    };
    const timer = setTimeout(done, maxMs);
    pc.addEventListener("icegatheringstatechange", check);
  });
}

/** One connection to the forwarding unit: the publication or one subscription. */
export class SfuLink {
  /**
   * @param {object} options
   *   kind        "publish" or "subscribe"
   *   source      the participant a subscription receives
   *   iceServers  STUN/TURN servers (as for the mesh)
   *   request(m)  sends a message on the meeting socket; resolves with the reply
   *   onStream(stream)  a subscription's media (again after each new connection)
   *   onState(state)    "connecting", "connected", "retrying", "refused", "closed"
   */
  constructor({ kind, source = null, iceServers, request, onStream, onState }) {
    this.kind = kind;
    this.source = source;
    this.iceServers = iceServers;
    this.request = request;
    this.onStream = onStream || (() => {});
    this.onState = onState || (() => {});
    this.pc = null;
    this.session = null;
    this.state = "new";
    this.closed = false;
    this.attempt = 0;
    this.tracks = { audio: null, video: null }; // a publication's, null: nothing yet
    this.localStream = null;
    this.stream = null; // a subscription's
    this.trace = []; // what happened, for diagnosis
    this._retryTimer = null;
    this._watchTimer = null;
  }

  start() {
    if (this.closed) return;
    this.attempt = 0;
    this._connect();
  }

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.trace.push(state);
    if (this.trace.length > 60) this.trace.splice(0, this.trace.length - 60);
    this.onState(state);
  }

  _drop() {
    clearTimeout(this._retryTimer);
    clearTimeout(this._watchTimer);
    const old = this.pc;
    this.pc = null;
    if (old) {
      old.onconnectionstatechange = null;
      old.ontrack = null;
      old.close();
    }
  }

  async _connect() {
    if (this.closed) return;
    this._drop();
    const pc = new RTCPeerConnection({ iceServers: this.iceServers });
    this.pc = pc;
    this.session = null;
    this._setState("connecting");
    if (this.kind === "publish") {
      for (const kind of KINDS) {
        const track = this.tracks[kind];
        const streams = this.localStream ? [this.localStream] : [];
        pc.addTransceiver(track || kind, { direction: "sendonly", streams });
      }
    } else {
      const stream = new MediaStream();
      this.stream = stream;
      for (const kind of KINDS) pc.addTransceiver(kind, { direction: "recvonly" });
      pc.ontrack = ({ track }) => {
        if (this.pc !== pc) return;
        if (!stream.getTracks().includes(track)) stream.addTrack(track);
        track.onunmute = () => this.pc === pc && this.onStream(stream);
        this.onStream(stream);
      };
    }
    pc.onconnectionstatechange = () => this._changed(pc);
    let reply;
    try {
      await pc.setLocalDescription(await pc.createOffer());
      await gathered(pc, GATHER_MAX_MS);
      if (this.pc !== pc) return;
      reply = await this.request({
        type: `sfu_${this.kind}`,
        ...(this.source ? { source: this.source } : {}),
        description: { type: "offer", sdp: pc.localDescription.sdp },
      });
      if (this.pc !== pc) {
        // Closed meanwhile (a new attempt replaces it on the server by itself).
        if (this.closed) this._closeSession(reply.session);
        return;
      }
      this.session = reply.session;
      await pc.setRemoteDescription(reply.description);
    } catch (failure) {
      if (this.pc !== pc) return;
      const code = failure?.code || failure?.name || "error";
      this.trace.push(`refused:${code}:${failure?.detail?.reason || ""}`);
      if (FINAL.has(code)) {
        this._drop();
        this._setState("refused");
        return;
      }
      this._retry();
      return;
    }
    if (this.kind === "publish") this._capBitrate(pc);
    this._watchTimer = setTimeout(() => {
      if (this.pc === pc && pc.connectionState !== "connected") this._retry();
    }, CONNECT_MAX_MS);
  }

  _changed(pc) {
    if (this.pc !== pc || this.closed) return;
    const state = pc.connectionState;
    if (state === "connected") {
      clearTimeout(this._watchTimer);
      this.attempt = 0;
      this._setState("connected");
    } else if (state === "failed") {
      this._retry();
    } else if (state === "disconnected") {
      clearTimeout(this._watchTimer);
      this._watchTimer = setTimeout(() => {
        if (this.pc === pc && pc.connectionState !== "connected") this._retry();
      }, DISCONNECTED_MAX_MS);
    }
  }

  _retry() {
    if (this.closed) return;
    this._drop();
    this._setState("retrying");
    const pause = Math.min(RETRY_MAX_MS, RETRY_FIRST_MS * 2 ** this.attempt);
    this.attempt += 1;
    this._retryTimer = setTimeout(() => this._connect(), pause * (0.75 + Math.random() * 0.5));
  }

  /**
   * The server says the media worker ``worker`` is gone (null: any): if this
   * connection was answered by it, negotiate again as after a failure, without
   * waiting for one. A publication goes at once (the first time: told again
   * before it connected, it waits the growing pause); a subscription after
   * the pause. An offer on its way is left alone (the server places it on a
   * live worker), and so is an attempt already due.
   */
  reconnect(worker, reason = "worker_lost") {
    if (this.closed || this.state === "refused" || this.state === "retrying") return;
    if (!this.session) return;
    if (worker && !this.session.startsWith(`${worker}.`)) return; // on another worker
    this.trace.push(`told:${reason}`);
    if (this.kind === "publish" && this.attempt === 0) {
      this.attempt = 1;
      this._connect();
    } else {
      this._retry();
    }
  }

  /** After our socket came back: whatever is not connected tries again now. */
  recover() {
    if (this.closed || this.state === "connected" || this.state === "connecting") return;
    this.attempt = 0;
    this._connect();
  }

  /** A publication's microphone or camera (or screen); null sends nothing. */
  setTrack(kind, track, stream) {
    this.tracks[kind] = track;
    this.localStream = stream || this.localStream;
    const transceiver = this.pc?.getTransceivers()[KINDS.indexOf(kind)];
    const sender = transceiver?.sender;
    if (!sender || sender.track === track) return;
    sender.replaceTrack(track).catch((error) => console.warn("replaceTrack", error));
    if (stream) sender.setStreams?.(stream);
  }

  async _capBitrate(pc) {
    const sender = pc.getTransceivers()[KINDS.indexOf("video")]?.sender;
    if (sender) await capBitrate(sender, VIDEO_MAX_BITRATE);
  }

  _closeSession(session) {
    if (session) this.request({ type: "sfu_close", session }).catch(() => {});
  }

  async stats() {
    return this.pc && !this.closed ? this.pc.getStats() : null;
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    const session = this.session;
    this._drop();
    this._setState("closed");
    this._closeSession(session);
  }
}

/** Our publication and our subscriptions, as the room asks for them. */
export class SfuClient {
  /**
   * @param {object} options
   *   iceServers, request   as for SfuLink
   *   onStream(pid, stream) another participant's media from the unit
   *   onState(pid, state)   a connection's state (pid null: our publication)
   */
  constructor({ iceServers, request, onStream, onState }) {
    this.iceServers = iceServers;
    this.request = request;
    this.onStream = onStream || (() => {});
    this.onState = onState || (() => {});
    this.publisher = null;
    this.subs = new Map(); // pid -> {link, generation}
  }

  /** Send these tracks (null for a kind: nothing yet) through the unit. */
  publish(tracks, stream) {
    if (this.publisher && this.publisher.state !== "refused") {
      for (const kind of KINDS) this.publisher.setTrack(kind, tracks[kind] || null, stream);
      return;
    }
    this.publisher?.close();
    const link = new SfuLink({
      kind: "publish",
      iceServers: this.iceServers,
      request: this.request,
      onState: (state) => this.onState(null, state),
    });
    link.tracks = { audio: tracks.audio || null, video: tracks.video || null };
    link.localStream = stream;
    this.publisher = link;
    link.start();
  }

  setTrack(kind, track, stream) {
    this.publisher?.setTrack(kind, track, stream);
  }

  unpublish() {
    this.publisher?.close();
    this.publisher = null;
  }

  /** Receive ``pid``: ``generation`` changes when they publish anew. */
  subscribe(pid, generation) {
    const existing = this.subs.get(pid);
    if (existing && existing.generation === generation && existing.link.state !== "refused") return;
    existing?.link.close();
    const link = new SfuLink({
      kind: "subscribe",
      source: pid,
      iceServers: this.iceServers,
      request: this.request,
      onStream: (stream) => this.onStream(pid, stream),
      onState: (state) => this.onState(pid, state),
    });
    this.subs.set(pid, { link, generation });
    link.start();
  }

  unsubscribe(pid) {
    this.subs.get(pid)?.link.close();
    this.subs.delete(pid);
  }

  recover() {
    this.publisher?.recover();
    for (const { link } of this.subs.values()) link.recover();
  }

  /** A media worker is gone (the notice media_reconnect): see SfuLink.reconnect. */
  reconnect(worker, reason) {
    this.publisher?.reconnect(worker, reason);
    for (const { link } of this.subs.values()) link.reconnect(worker, reason);
  }

  close() {
    this.unpublish();
    for (const pid of [...this.subs.keys()]) this.unsubscribe(pid);
  }
}
