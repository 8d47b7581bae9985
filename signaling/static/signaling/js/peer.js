// One WebRTC link to one other participant, with "perfect negotiation"
// (W3C WebRTC 1.0, §10.7): both sides may start a negotiation at any time
// (adding a camera, sharing a screen, restarting ICE); when two offers cross,
// the polite side rolls its own back and answers, the impolite side ignores
// the other's offer. The hub tells each side which one it is (`polite`), so
// there are no glare failures.
//
// The first negotiation of a link is not left to chance, though: Chromium
// sometimes gathers no ICE candidates at all on a side that rolled back its
// own first offer (seen here: both sides "stable", ICE stuck at "new"). So the
// impolite side opens the link (with receive-only transceivers if it has
// nothing to send) and the polite side adds its media once that first offer
// has arrived. A watchdog restarts ICE on a link that does not connect.

// How long the polite side waits for the first offer before sending anyway,
// and how long a link may sit unconnected before the impolite side restarts ICE.
const FIRST_OFFER_WAIT_MS = 3000;
const STUCK_MS = 8000;

const VIDEO_MAX_BITRATE = 500_000; // bits per second, per receiving participant

/** Cap what a video sender sends (the first encoding) at maxBitrate bits per
 * second, degrading resolution and frame rate in balance; a browser that
 * refuses sends as it would. Also used by sfu.js for its publication. */
export async function capBitrate(sender, maxBitrate) {
  try {
    const parameters = sender.getParameters();
    if (!parameters.encodings || !parameters.encodings.length) parameters.encodings = [{}];
    parameters.encodings[0].maxBitrate = maxBitrate;
    parameters.degradationPreference = "balanced";
    await sender.setParameters(parameters);
  } catch (error) {
    console.debug("bitrate cap not applied", error);
  }
}

export class PeerLink {
  /**
   * @param {object} options
   *   pid         the other participant
   *   polite      from the hub: exactly one side of each pair is polite
   *   iceServers  STUN/TURN servers with time-limited credentials
   *   send(msg)   sends {description} or {candidate} to the other side
   *   onStream(stream)  the other side's media stream (once it has tracks)
   *   onState(state)    the connection's state ("connected", "failed"...)
   */
  constructor({ pid, polite, iceServers, send, onStream, onState }) {
    this.pid = pid;
    this.polite = polite;
    this.send = send;
    this.onStream = onStream || (() => {});
    this.onState = onState || (() => {});
    this.pc = new RTCPeerConnection({ iceServers });
    this.makingOffer = false;
    this.ignoreOffer = false;
    this.settingRemoteAnswer = false;
    this.closed = false;
    this._chain = Promise.resolve();
    this.stream = new MediaStream();
    this.senders = { audio: null, video: null };
    this.wanted = new Map(); // kind -> {track, stream}: what we send once started
    this.started = !polite;
    // What happened, for diagnosis (window.egminaMeeting in the console).
    this.trace = [];
    if (polite) {
      this._startTimer = setTimeout(() => this._start(), FIRST_OFFER_WAIT_MS);
    } else {
      // After the page has attached its tracks (same task), make sure there is
      // something to negotiate.
      setTimeout(() => this._openFirst(), 0);
    }
    this._unconnectedSince = Date.now();
    this._watchdog = setInterval(() => this._watch(), 1000);

    this.pc.onnegotiationneeded = async () => {
      try {
        this.makingOffer = true;
        await this.pc.setLocalDescription();
        this.trace.push(`${this.pc.localDescription.type}>`);
        this.send({ description: this._plain(this.pc.localDescription) });
      } catch (error) {
        console.warn("negotiation failed", error);
      } finally {
        this.makingOffer = false;
      }
    };
    this.pc.onicecandidate = ({ candidate }) => {
      // A null candidate ends the gathering: nothing to relay.
      if (candidate && candidate.candidate) {
        this.trace.push("c>");
        this.send({ candidate: candidate.toJSON() });
      }
    };
    this.pc.ontrack = ({ track }) => {
      if (!this.stream.getTracks().includes(track)) this.stream.addTrack(track);
      track.onunmute = () => this.onStream(this.stream);
      this.onStream(this.stream);
    };
    this.pc.onconnectionstatechange = () => {
      const state = this.pc.connectionState;
      this.onState(state);
      if (state === "failed") this.restartIce();
    };
  }

  _plain(description) {
    return { type: description.type, sdp: description.sdp };
  }

  _openFirst() {
    if (this.closed || this.pc.getTransceivers().length) return;
    for (const kind of ["audio", "video"]) this.pc.addTransceiver(kind, { direction: "recvonly" });
  }

  _start() {
    if (this.started || this.closed) return;
    clearTimeout(this._startTimer);
    this.started = true;
    for (const [kind, { track, stream }] of this.wanted) this._send(kind, track, stream);
  }

  _watch() {
    if (this.closed) return;
    const state = this.pc.iceConnectionState;
    if (state === "connected" || state === "completed" || state === "checking") {
      this._unconnectedSince = Date.now();
      return;
    }
    if (Date.now() - this._unconnectedSince <= STUCK_MS) return;
    this._unconnectedSince = Date.now();
    if (this.pc.signalingState === "have-local-offer") {
      // Our offer got no answer (lost on the way, or refused): take it back
      // and offer again.
      this.trace.push("reoffer");
      this._reoffer();
    } else if (!this.polite && this.pc.signalingState === "stable" && this.pc.remoteDescription) {
      this.trace.push(`restart(${state})`);
      this.restartIce();
    }
  }

  async _reoffer() {
    try {
      if (this.pc.signalingState === "have-local-offer") {
        await this.pc.setLocalDescription({ type: "rollback" });
      }
      this.pc.restartIce(); // when stable, this asks for a new negotiation
    } catch (error) {
      console.warn("re-offer failed", error);
    }
  }

  /** After a reconnect (ours or theirs): renegotiate what did not connect. */
  recover() {
    if (this.closed) return;
    const state = this.pc.connectionState;
    if (state === "connected" || state === "connecting") return;
    if (this.pc.signalingState === "have-local-offer") this._reoffer();
    else if (this.pc.remoteDescription) this.restartIce();
    else if (!this.polite) this._reoffer();
  }

  /** Our microphone or camera (or screen) for this link; null stops sending. */
  setTrack(kind, track, stream) {
    this.wanted.set(kind, { track, stream });
    if (this.started) this._send(kind, track, stream);
  }

  _send(kind, track, stream) {
    const sender = this.senders[kind];
    if (sender) {
      sender.replaceTrack(track).catch((error) => console.warn("replaceTrack", error));
      return;
    }
    if (!track) return;
    // Reuse a transceiver the other side's offer created, if there is one.
    const free = this.pc
      .getTransceivers()
      .find(
        (t) =>
          t.receiver.track.kind === kind &&
          !t.sender.track &&
          !Object.values(this.senders).includes(t.sender) &&
          t.currentDirection !== "stopped",
      );
    if (free) {
      free.direction = "sendrecv";
      free.sender.replaceTrack(track);
      this.senders[kind] = free.sender;
      free.sender.setStreams?.(stream);
    } else {
      this.senders[kind] = this.pc.addTrack(track, stream);
    }
    // A mesh sends one copy per participant: cap each so that a phone on a
    // rural uplink can send to several people and keep the sound.
    if (kind === "video") capBitrate(this.senders.video, VIDEO_MAX_BITRATE);
  }

  /** A message from the other side: handled strictly in order. */
  receive(message) {
    this._chain = this._chain.then(() => this._handle(message)).catch((error) => {
      console.warn("signal failed", error);
    });
    return this._chain;
  }

  async _handle({ description, candidate }) {
    if (this.closed) return;
    if (description) {
      const readyForOffer =
        !this.makingOffer && (this.pc.signalingState === "stable" || this.settingRemoteAnswer);
      const collision = description.type === "offer" && !readyForOffer;
      this.ignoreOffer = !this.polite && collision;
      this.trace.push(`<${description.type}${collision ? "!" : ""}${this.ignoreOffer ? "x" : ""}`);
      if (this.ignoreOffer) return;
      this.settingRemoteAnswer = description.type === "answer";
      try {
        await this.pc.setRemoteDescription(description); // rolls back our offer if needed
      } finally {
        this.settingRemoteAnswer = false;
      }
      if (description.type === "offer") {
        await this.pc.setLocalDescription();
        this.trace.push("answer>");
        this.send({ description: this._plain(this.pc.localDescription) });
        // The link is open: now our media goes on it (a second, glare-free round).
        this._start();
      }
    } else if (candidate) {
      try {
        await this.pc.addIceCandidate(candidate);
        this.trace.push("<c");
      } catch (error) {
        this.trace.push("<c!");
        if (!this.ignoreOffer) throw error;
      }
    }
  }

  /** New ICE (after a network change or a reconnect): renegotiates. */
  restartIce() {
    if (!this.closed) this.pc.restartIce();
  }

  async stats() {
    return this.closed ? null : this.pc.getStats();
  }

  close() {
    this.closed = true;
    clearTimeout(this._startTimer);
    clearInterval(this._watchdog);
    this.pc.close();
  }
}
