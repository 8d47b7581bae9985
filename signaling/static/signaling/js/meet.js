// The meeting page: pre-join preview, the virtual queue, the call (a mesh of
// PeerLinks, or through the forwarding unit once the room says topology
// "sfu": sfu.js), chat, the participants and queue panels, moderator controls.
// Plain ES module, no build step. The server's protocol: signaling/protocol.py.
//
// From mesh to the forwarding unit without anyone leaving: when the room
// switches, we publish and subscribe to everyone who publishes, and keep each
// direct connection until it carries nothing the unit does not: our copy of
// their media from the unit is playing, and they told us (sfu_ready) that
// they receive ours from it too. Then the direct connection closes; the tile
// never goes black (the unit's video takes the tile's place once it plays).
//
// Everything the user reads comes from the page (translated by Django) and
// every name or message another person typed is put in with textContent:
// nothing received is ever parsed as HTML.

import { HubSocket } from "/static/hub/js/realtime.js";
import { PeerLink } from "./peer.js";
import { SfuClient } from "./sfu.js";

const config = JSON.parse(document.getElementById("meet-config").textContent);
const text = JSON.parse(document.getElementById("meet-text").textContent);
const $ = (id) => document.getElementById(id);
const root = document.querySelector(".meet");

function fmt(template, params = {}) {
  return String(template).replace(/%\((\w+)\)s/g, (_, key) => String(params[key] ?? ""));
}

// Messages announced together (one room update can say several things: the
// queue position and that the meeting is recorded) are read one after another.
const announcing = [];

function announce(message) {
  const status = $("meet-status");
  if (!message) {
    if (!announcing.length) status.textContent = "";
    return;
  }
  if (!announcing.length) {
    status.textContent = "";
    // A fresh text node each time, so that screen readers read a repeated message too.
    window.setTimeout(() => (status.textContent = announcing.splice(0).join(" ")), 50);
  }
  announcing.push(message);
}

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

// --- State --------------------------------------------------------------------

const REJOIN_KEY = `meet:${config.code}:rejoin`;
const meeting = {
  hub: null,
  you: null,
  room: null,
  status: null,
  iceServers: [],
  links: new Map(), // pid -> {link, instance, epoch}: direct connections (mesh)
  tiles: new Map(), // pid -> the tile (li) of another participant
  sfu: null, // SfuClient while the room's media go through the forwarding unit
  sfuShown: new Set(), // pids whose tile shows their media from the unit
  readyFrom: new Set(), // pids who receive us through the unit (sfu_ready)
  instance: crypto.randomUUID ? crypto.randomUUID() : String(Math.random()).slice(2),
  stream: new MediaStream(),
  micTrack: null,
  cameraTrack: null,
  screenTrack: null,
  wantAudio: true,
  wantVideo: true,
  joinedOnce: false,
  over: false,
  knownQueue: new Set(),
  chatIds: new Set(),
  joined: false, // this socket has joined: our other messages may go
  waiters: [], // messages waiting for the join
  seenMutes: { audio: null, video: null },
  lastPosition: null,
  recordingSince: null, // the recording the page shows (null: none)
};

// Server refusals after which trying again cannot help (the rest - a lost
// connection, a timeout - are retried: the socket reconnects and joins again).
const FINAL_CODES = new Set(["gone", "forbidden", "locked", "full", "not_found", "unauthenticated"]);
window.egminaMeeting = meeting; // for the browser tests and the curious

function show(view) {
  const changed = root.dataset.state !== view.replace("-view", "");
  for (const id of ["prejoin-view", "queue-view", "meeting-view", "ended-view"]) {
    const section = $(id);
    if (section) section.hidden = id !== view;
  }
  root.dataset.state = view.replace("-view", "");
  // A keyboard or screen-reader user lands where the new view starts.
  const heading = $(view)?.querySelector("h2");
  if (changed && heading) {
    heading.setAttribute("tabindex", "-1");
    heading.focus({ preventScroll: false });
  }
}

// Lists are drawn again on every change: keep the focus on the same control.
function keepingFocus(draw) {
  const active = document.activeElement;
  const item = active?.closest?.("[data-pid]");
  const key = item && active.dataset.action ? [item.dataset.pid, active.dataset.action] : null;
  draw();
  if (key && !document.body.contains(active)) {
    const again = document.querySelector(
      `[data-pid="${CSS.escape(key[0])}"] [data-action="${CSS.escape(key[1])}"]`,
    );
    if (again) again.focus();
  }
}

// --- Devices ------------------------------------------------------------------

async function startDevices({ audioId, videoId } = {}) {
  const note = $("preview-note");
  note.hidden = true;
  const wanted = {
    audio: audioId ? { deviceId: { exact: audioId } } : true,
    // Modest by default: a phone on a rural link sends 640×360 well.
    video: {
      width: { ideal: 640 },
      height: { ideal: 360 },
      frameRate: { ideal: 24, max: 30 },
      ...(videoId ? { deviceId: { exact: videoId } } : {}),
    },
  };
  let stream = null;
  try {
    stream = await navigator.mediaDevices.getUserMedia(wanted);
  } catch (error) {
    // Try the microphone alone, then nothing: one can still listen and write.
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: wanted.audio });
    } catch {
      stream = null;
    }
    note.textContent = error.name === "NotAllowedError" ? text.blocked_devices : text.no_devices;
    note.hidden = false;
  }
  for (const track of meeting.stream.getTracks()) {
    if (track !== meeting.screenTrack) track.stop();
    meeting.stream.removeTrack(track);
  }
  meeting.micTrack = stream?.getAudioTracks()[0] || null;
  meeting.cameraTrack = stream?.getVideoTracks()[0] || null;
  if (meeting.micTrack) meeting.stream.addTrack(meeting.micTrack);
  if (meeting.cameraTrack) meeting.stream.addTrack(meeting.cameraTrack);
  applyWanted();
  $("preview").srcObject = meeting.stream;
  await listDevices();
  attachAll();
}

async function listDevices() {
  let devices = [];
  try {
    devices = await navigator.mediaDevices.enumerateDevices();
  } catch {
    return;
  }
  const fill = (select, kind, current) => {
    const chosen = select.value || current;
    select.replaceChildren();
    const matching = devices.filter((d) => d.kind === kind);
    if (!matching.length) select.append(el("option", { value: "", text: text.default_device }));
    matching.forEach((device, index) => {
      select.append(
        el("option", {
          value: device.deviceId,
          text: device.label || `${text.default_device} ${index + 1}`,
          selected: device.deviceId === chosen,
        }),
      );
    });
  };
  fill($("camera-select"), "videoinput", meeting.cameraTrack?.getSettings().deviceId);
  fill($("microphone-select"), "audioinput", meeting.micTrack?.getSettings().deviceId);
}

function applyWanted() {
  if (meeting.micTrack) meeting.micTrack.enabled = meeting.wantAudio;
  if (meeting.cameraTrack) meeting.cameraTrack.enabled = meeting.wantVideo;
}

function videoTrack() {
  return meeting.screenTrack || (meeting.wantVideo ? meeting.cameraTrack : null);
}

function attachLocal(link) {
  if (!mayPublish()) {
    link.setTrack("audio", null, meeting.stream);
    link.setTrack("video", null, meeting.stream);
    return;
  }
  link.setTrack("audio", meeting.micTrack, meeting.stream);
  link.setTrack("video", videoTrack(), meeting.stream);
}

// Our microphone and camera (or screen) on every connection that sends them.
function attachAll() {
  for (const { link } of meeting.links.values()) attachLocal(link);
  publishSfu();
}

// Through the unit we publish while we have something to send (the unit ends
// a publication that sends nothing for a while); same connection, new tracks.
function publishSfu() {
  if (!meeting.sfu) return;
  const tracks = localTracks();
  if (tracks.audio || tracks.video) meeting.sfu.publish(tracks, meeting.stream);
  else meeting.sfu.unpublish();
}

function localTracks() {
  if (!mayPublish()) return { audio: null, video: null };
  return { audio: meeting.micTrack, video: videoTrack() };
}

function mayPublish() {
  const me = myself();
  if (!me || meeting.status !== "admitted") return false;
  const actions = meeting.room?.actions || [];
  if (!actions.includes("audio")) return false;
  return !(config.kind === "public" && ["participant", "guest"].includes(me.role) && !me.floor);
}

// --- The socket ---------------------------------------------------------------------

async function guestToken() {
  if (config.signedIn) return null;
  const input = $("guest-name");
  const name = input.value.trim();
  if (!name) {
    $("guest-name-error").hidden = false;
    input.setAttribute("aria-invalid", "true");
    input.focus();
    throw new Error("name");
  }
  $("guest-name-error").hidden = true;
  input.removeAttribute("aria-invalid");
  const body = new URLSearchParams({ name });
  const response = await fetch(config.ticket, {
    method: "POST",
    body,
    headers: { "X-CSRFToken": csrfToken() },
    credentials: "same-origin",
  });
  const reply = await response.json();
  if (!response.ok) throw new Error(reply.error || response.statusText);
  return reply.guest;
}

function csrfToken() {
  const field = document.querySelector("input[name=csrfmiddlewaretoken]");
  if (field) return field.value;
  const match = document.cookie.match(/(?:^|; )csrftoken=([^;]+)/);
  return match ? decodeURIComponent(match[1]) : "";
}

async function join(event) {
  event.preventDefault();
  const button = $("join-button");
  const error = $("join-error");
  error.hidden = true;
  button.disabled = true;
  let guest;
  try {
    guest = await guestToken();
  } catch (failure) {
    button.disabled = false;
    if (failure.message !== "name") {
      error.textContent = fmt(text.error, { message: failure.message });
      error.hidden = false;
    }
    return;
  }
  meeting.wantAudio = $("prejoin-microphone").checked;
  meeting.wantVideo = $("prejoin-camera").checked;
  applyWanted();
  const url = config.socket + (guest ? `?guest=${encodeURIComponent(guest)}` : "");
  meeting.hub = new HubSocket(url, {
    onState: onSocketState,
    onMessage: onServerMessage,
    onError: (failure) => console.warn("meeting socket", failure),
  });
}

async function onSocketState(state, detail) {
  if (state === "open") {
    for (let attempt = 0; !meeting.over && meeting.hub.state === "open"; attempt += 1) {
      try {
        await sendJoin();
        return;
      } catch (failure) {
        if (meeting.over) return;
        if (FINAL_CODES.has(failure.code)) {
          finish(failure.message);
          return;
        }
        // Lost or slow: wait, then ask again on this socket (or the next one).
        await new Promise((resolve) => setTimeout(resolve, Math.min(8000, 500 * 2 ** attempt)));
      }
    }
  } else if (state === "reconnecting") {
    meeting.joined = false;
    if (meeting.joinedOnce && !meeting.over) {
      setQuality("offline");
      announce(text.reconnecting);
    }
  } else if (state === "closed" && !meeting.over) {
    meeting.joined = false;
    finish(detail?.fatal ? text.link_expired : text.connection_problem);
  }
}

// Our messages go after this socket's join (requests queued while the
// connection was down would otherwise reach the server before it).
function whenJoined() {
  if (meeting.joined) return Promise.resolve();
  return new Promise((resolve) => meeting.waiters.push(resolve));
}

async function send(message) {
  await whenJoined();
  return meeting.hub.request(message);
}

async function sendJoin() {
  const rejoin = sessionStorage.getItem(REJOIN_KEY);
  const reply = await meeting.hub.request({
    type: "join",
    instance: meeting.instance,
    ...(rejoin ? { rejoin } : {}),
  });
  sessionStorage.setItem(REJOIN_KEY, reply.rejoin_token);
  if (meeting.you && reply.you !== meeting.you) {
    // A new place (the old one expired): every link was made for the old one.
    closeAllLinks();
    meeting.room = null;
  }
  meeting.you = reply.you;
  meeting.iceServers = reply.ice_servers;
  if (meeting.joinedOnce) {
    announce(text.reconnected);
    setQuality("good");
  }
  meeting.joinedOnce = true;
  meeting.joined = true;
  for (const resolve of meeting.waiters.splice(0)) resolve();
  applyRoom(reply.room);
  if (reply.resumed) {
    // Our socket came back; our peer connections may have lost their path too.
    for (const { link } of meeting.links.values()) link.recover();
    meeting.sfu?.recover();
  }
  sendMedia(true);
}

function request(message) {
  return send(message).catch((failure) => {
    const lost = failure.code === "disconnected" || failure.code === "timeout";
    announce(lost ? text.connection_problem : fmt(text.error, { message: failure.message }));
    throw failure;
  });
}

function onServerMessage(message) {
  switch (message.type) {
    case "room":
      applyRoom(message.room);
      break;
    case "signal":
      onSignal(message);
      break;
    case "sfu_ready":
      meeting.readyFrom.add(message.from);
      switchOver();
      break;
    case "notice":
      onNotice(message);
      break;
    case "chat":
      addChat(message.message);
      break;
    case "left":
      finish(message.message);
      break;
    case "ended":
      finish(message.message);
      break;
    default:
      break;
  }
}

function finish(message) {
  if (meeting.over) return;
  meeting.over = true;
  $("recording-indicator").hidden = true;
  meeting.waiters.splice(0);
  sessionStorage.removeItem(REJOIN_KEY);
  meeting.hub?.close();
  for (const { link } of meeting.links.values()) link.close();
  meeting.links.clear();
  meeting.sfu?.close();
  meeting.sfu = null;
  for (const track of meeting.stream.getTracks()) track.stop();
  meeting.screenTrack?.stop();
  $("ended-message").textContent = message || "";
  show("ended-view");
  $("ended-heading").focus?.();
  announce(message || "");
}

function onNotice({ event, detail }) {
  if (event === "admitted") announce(text.admitted);
  else if (event === "sent_back") announce(text.sent_back);
  else if (event === "host") announce(text.host);
  else if (event === "floor_given") announce(text.floor_given);
  else if (event === "floor_taken") {
    announce(text.floor_taken);
    stopScreen(false);
  } else if (event === "recording_failed") {
    announce(fmt(text.recording_failed, { name: detail.name, message: detail.message }));
  } else if (event === "media_reconnect") {
    // Our media worker is gone: publish and subscribe again now, not once
    // the connections have failed (the tiles show it as for a failure).
    meeting.sfu?.reconnect(detail?.worker || null, detail?.reason);
  } else if (event === "muted") {
    if (detail.audio) {
      meeting.wantAudio = false;
      announce(text.muted_audio);
    }
    if (detail.video) {
      meeting.wantVideo = false;
      stopScreen(false);
      announce(text.muted_video);
    }
    applyWanted();
    attachAll();
    renderControls();
  }
}

// --- The room ----------------------------------------------------------------------

function myself() {
  return meeting.room?.participants?.find((p) => p.pid === meeting.you) || null;
}

function applyRoom(room) {
  if (meeting.room && room.version < meeting.room.version) return;
  const before = meeting.status;
  meeting.room = room;
  meeting.status = room.status;
  renderRecording(room);
  if (room.status === "queued") {
    show("queue-view");
    renderQueueTicket(room.queue);
    if (before !== "queued") announce(fmt(text.queued, { position: room.queue.position }));
    closeAllLinks();
    return;
  }
  show("meeting-view");
  if (before !== "admitted") {
    meeting.chatIds.clear();
    $("chat-log").replaceChildren();
    request({ type: "history" }).then((reply) => reply.messages.forEach(addChat), () => {});
  }
  applyMutes();
  syncLinks(room.participants);
  syncSfu(room);
  renderTiles(room.participants);
  switchOver();
  keepingFocus(() => {
    renderPeople(room);
    renderHostQueue(room);
  });
  renderControls();
  // Let in, given the floor, back from the queue: tell the others what we send.
  sendMedia();
}

// A moderator turned our microphone or camera off: the room counts it, so
// even if the notice was lost, the mute is applied.
function applyMutes() {
  const me = myself();
  if (!me) return;
  for (const kind of ["audio", "video"]) {
    const count = me[`${kind}_mutes`] || 0;
    const seen = meeting.seenMutes[kind];
    meeting.seenMutes[kind] = count;
    if (seen === null || count <= seen) continue;
    if (kind === "audio") meeting.wantAudio = false;
    else {
      meeting.wantVideo = false;
      stopScreen(false);
    }
    applyWanted();
    attachAll();
  }
}

// Recording: everyone sees it (in the queue too) for as long as it is on, as
// text, and hears it once when it starts or stops (screen readers).
function renderRecording(room) {
  const since = room.recording ? room.recording_since : null;
  const box = $("recording-indicator");
  box.hidden = since === null;
  if (since !== null) {
    const time = new Date(since * 1000).toLocaleTimeString(document.documentElement.lang, {
      hour: "2-digit",
      minute: "2-digit",
    });
    $("recording-text").textContent = text.recording_on;
    $("recording-since").textContent = fmt(text.recording_since, { time });
  }
  if (since !== meeting.recordingSince) {
    if (since !== null) announce(text.recording_started);
    else if (meeting.recordingSince !== null) announce(text.recording_stopped);
    meeting.recordingSince = since;
  }
}

function renderQueueTicket(queue) {
  if (meeting.lastPosition !== null && queue.position !== meeting.lastPosition) {
    announce(fmt(text.queued, { position: queue.position }));
  }
  meeting.lastPosition = queue.position;
  $("queue-ticket").textContent = String(queue.ticket);
  $("queue-position").textContent = String(queue.position);
  const minutes = Math.ceil(queue.estimate / 60);
  $("queue-estimate").textContent = minutes > 0 ? fmt(text.minutes, { n: minutes }) : text.now;
  document.title = `(${queue.position}) ${config.title}`;
}

function sfuOn() {
  return meeting.status === "admitted" && meeting.room?.topology === "sfu";
}

function syncLinks(participants) {
  const present = new Map(participants.map((p) => [p.pid, p]));
  for (const [pid, entry] of meeting.links) {
    const other = present.get(pid);
    if (!other || other.instance !== entry.instance) {
      // Gone, or their page was reloaded: that connection is dead.
      closeLink(pid);
    } else if (other.epoch > entry.epoch) {
      // They reconnected: if our connection to them suffered, renegotiate.
      entry.epoch = other.epoch;
      entry.link.recover();
    }
  }
  for (const other of participants) {
    // Through the forwarding unit, nobody opens a direct connection any more
    // (those still open stay until the unit carries what they carry).
    if (sfuOn()) break;
    if (other.pid === meeting.you || meeting.links.has(other.pid)) continue;
    // Someone away cannot answer yet; the link opens when they are back.
    if (!other.connected) continue;
    if (!shownTo(other)) continue;
    openLink(other);
  }
  for (const { link } of meeting.links.values()) attachLocal(link);
}

// Whether another participant is someone we exchange media with.
function shownTo(other) {
  if (other.pid === meeting.you) return false;
  // Our own earlier place, if it has not timed out yet.
  if (other.instance === meeting.instance) return false;
  return !(meeting.room.role === "viewer" && other.role === "viewer");
}

function closeLink(pid) {
  meeting.links.get(pid)?.link.close();
  meeting.links.delete(pid);
  lastStats.delete(pid);
}

// --- Through the forwarding unit ------------------------------------------------------

function syncSfu(room) {
  if (!sfuOn()) {
    if (meeting.sfu) {
      // Back to a mesh (the unit was switched off): the direct connections open again.
      meeting.sfu.close();
      meeting.sfu = null;
      meeting.sfuShown.clear();
      meeting.readyFrom.clear();
    }
    return;
  }
  if (!meeting.sfu) {
    meeting.sfu = new SfuClient({
      iceServers: meeting.iceServers,
      request: (message) => send(message),
      onStream: onSfuStream,
      onState: onSfuState,
    });
  }
  publishSfu();
  const present = new Set();
  for (const other of room.participants) {
    if (!shownTo(other) || !other.published) continue;
    present.add(other.pid);
    // A new page or a new publication (a media worker replaced): subscribe again.
    meeting.sfu.subscribe(other.pid, `${other.instance}/${other.published}`);
  }
  for (const pid of [...meeting.sfu.subs.keys()]) {
    if (!present.has(pid)) meeting.sfu.unsubscribe(pid);
  }
}

function mainVideo(tile) {
  return tile.querySelector(".tile__video:not(.tile__video--pending)");
}

function playing(video) {
  return Boolean(video) && video.readyState >= 2 && video.videoWidth > 0 && !video.paused;
}

function showIn(video, stream) {
  if (video.srcObject === stream) return;
  video.srcObject = stream;
  video.play().catch(() => offerPlayButton(video));
}

// Another participant's media from the unit: shown at once if the tile has
// nothing playing, else prepared out of sight until it plays (switchOver).
function onSfuStream(pid, stream) {
  const tile = meeting.tiles.get(pid);
  if (!tile) return; // renderTiles shows it when the tile is made
  const main = mainVideo(tile);
  const pending = tile.querySelector(".tile__video--pending");
  if (main.srcObject === stream || pending?.srcObject === stream) return;
  pending?.remove();
  if (meeting.sfuShown.has(pid) || !playing(main)) {
    meeting.sfuShown.add(pid);
    showIn(main, stream);
    return;
  }
  const next = el("video", {
    class: "tile__video tile__video--pending",
    autoplay: true,
    playsinline: true,
    "aria-hidden": "true",
  });
  next.muted = true; // until it takes the tile's place: no sound twice
  next.srcObject = stream;
  main.after(next);
  next.play().catch(() => {});
}

function onSfuState(pid, state) {
  if (pid === null) return;
  const tile = meeting.tiles.get(pid);
  if (tile && meeting.sfuShown.has(pid)) {
    tile.classList.toggle("tile--lost", state === "retrying");
  }
  if (state === "connected") switchOver();
}

// The unit's copy takes the tile's place once it plays (no black gap), and a
// direct connection closes once neither side needs it (see the top).
function switchOver() {
  if (!meeting.sfu) return;
  const people = new Map((meeting.room?.participants || []).map((p) => [p.pid, p]));
  for (const [pid, tile] of meeting.tiles) {
    const pending = tile.querySelector(".tile__video--pending");
    if (pending && playing(pending)) {
      mainVideo(tile).remove();
      pending.classList.remove("tile__video--pending");
      pending.removeAttribute("aria-hidden");
      pending.muted = false;
      pending.play().catch(() => offerPlayButton(pending));
      meeting.sfuShown.add(pid);
    }
  }
  const weSend = mayPublish() && Boolean(meeting.micTrack || videoTrack());
  for (const [pid, entry] of meeting.links) {
    const other = people.get(pid);
    if (!other) continue;
    if (!receivedThroughSfu(other)) continue;
    if (!entry.toldAt || Date.now() - entry.toldAt > 5000) {
      // Told again now and then: a message can be lost, or they were away.
      entry.toldAt = Date.now();
      send({ type: "sfu_ready", to: pid }).catch(() => {});
    }
    if (meeting.readyFrom.has(pid) || !weSend) closeLink(pid);
  }
}

// Whether the unit brings us everything this participant sends.
function receivedThroughSfu(other) {
  if (!other.audio && !other.video && !other.screen) return true;
  const sub = meeting.sfu?.subs.get(other.pid);
  if (!sub || !meeting.sfuShown.has(other.pid)) return false;
  if (other.video || other.screen) {
    const tile = meeting.tiles.get(other.pid);
    return Boolean(tile) && playing(mainVideo(tile));
  }
  return sub.link.state === "connected";
}

function openLink(other) {
  const link = new PeerLink({
    pid: other.pid,
    polite: other.polite,
    iceServers: meeting.iceServers,
    send: signalSender(other.pid),
    onStream: (stream) => {
      // Once the unit's copy is shown, the direct one is only on its way out.
      if (meeting.sfuShown.has(other.pid)) return;
      const tile = meeting.tiles.get(other.pid);
      if (tile) showIn(mainVideo(tile), stream);
    },
    onState: (state) => {
      if (meeting.sfuShown.has(other.pid)) return;
      const lost = state === "failed" || state === "disconnected";
      meeting.tiles.get(other.pid)?.classList.toggle("tile--lost", lost);
    },
  });
  meeting.links.set(other.pid, { link, instance: other.instance, epoch: other.epoch });
  return link;
}

// Sends one peer's negotiation in order. When the server is busy (its queue
// towards the other participant's server is full: rate_limited) the message
// is sent again after a pause, and the ones after it wait: an answer must not
// overtake its offer.
function signalSender(pid) {
  const queue = [];
  let sending = false;
  async function drain() {
    if (sending) return;
    sending = true;
    while (queue.length && !meeting.over) {
      const entry = queue[0];
      try {
        await send({ type: "signal", to: pid, ...entry.payload });
        queue.shift();
      } catch (failure) {
        entry.attempt += 1;
        if (failure.code !== "rate_limited" || entry.attempt > 6) {
          console.warn("signal not relayed", failure.code, failure.message);
          queue.shift();
          continue;
        }
        await new Promise((resolve) => setTimeout(resolve, 150 * 2 ** entry.attempt));
      }
    }
    sending = false;
  }
  return (payload) => {
    queue.push({ payload, attempt: 0 });
    drain();
  };
}

function onSignal(message) {
  // The server sends the room update naming a participant before anything
  // they send: a signal from someone we do not know is not for this call.
  const entry = meeting.links.get(message.from);
  if (entry) entry.link.receive(message);
}

function closeAllLinks() {
  for (const { link } of meeting.links.values()) link.close();
  meeting.links.clear();
  meeting.sfu?.close();
  meeting.sfu = null;
  meeting.sfuShown.clear();
  meeting.readyFrom.clear();
  meeting.tiles.clear();
  $("videos").replaceChildren();
}

function offerPlayButton(video) {
  const tile = video.closest(".tile");
  if (!tile || tile.querySelector(".tile__play")) return;
  const button = el("button", {
    type: "button",
    class: "button tile__play",
    text: text.play,
    onclick: () => {
      video.play().then(() => button.remove(), () => {});
    },
  });
  tile.append(button);
}

function roleLabel(role) {
  return text[`${role}_role`] || role;
}

function renderTiles(participants) {
  const grid = $("videos");
  let own = grid.querySelector('[data-pid="self"]');
  if (!own) {
    own = tile("self", true);
    own.querySelector("video").srcObject = meeting.stream;
    grid.prepend(own);
  }
  const me = myself();
  own.querySelector(".tile__name").textContent = `${me?.name || ""} (${text.you})`;
  const present = new Map(participants.map((p) => [p.pid, p]));
  for (const [pid, old] of meeting.tiles) {
    const other = present.get(pid);
    if (!other || other.instance !== old.dataset.instance || !wantsTile(other)) {
      // Gone, or their page was reloaded: a new tile for the new page.
      old.remove();
      meeting.tiles.delete(pid);
      meeting.sfuShown.delete(pid);
      meeting.readyFrom.delete(pid);
    }
  }
  for (const other of participants) {
    if (!wantsTile(other)) continue;
    let box = meeting.tiles.get(other.pid);
    if (!box) {
      box = tile(other.pid, false);
      box.dataset.instance = other.instance;
      meeting.tiles.set(other.pid, box);
      grid.append(box);
      const sub = meeting.sfu?.subs.get(other.pid)?.link;
      const link = meeting.links.get(other.pid)?.link;
      if (sub?.stream?.getTracks().length) {
        meeting.sfuShown.add(other.pid);
        showIn(mainVideo(box), sub.stream);
      } else if (link?.stream.getTracks().length) {
        showIn(mainVideo(box), link.stream);
      }
    }
    box.querySelector(".tile__name").textContent = other.name;
    box.querySelector(".tile__state").textContent = [
      other.role !== "participant" ? roleLabel(other.role) : "",
      other.hand ? "✋" : "",
      other.audio ? "" : "🔇",
      other.connected ? "" : text.away,
    ]
      .filter(Boolean)
      .join(" · ");
    box.classList.toggle("tile--camera-off", !other.video && !other.screen);
  }
  grid.dataset.count = String(grid.children.length);
}

// A tile for everyone we have a connection with, and through the unit for
// everyone we exchange media with (once seen connected, as in a mesh).
function wantsTile(other) {
  if (!shownTo(other)) return false;
  if (meeting.links.has(other.pid) || meeting.sfu?.subs.has(other.pid)) return true;
  return sfuOn() && (other.connected || meeting.tiles.has(other.pid));
}

function tile(pid, self) {
  return el(
    "li",
    { class: "tile", "data-pid": pid },
    el("video", {
      class: `tile__video${self ? " tile__video--mirror" : ""}`,
      autoplay: true,
      playsinline: true,
      muted: self,
    }),
    el("p", { class: "tile__label" }, el("span", { class: "tile__name" }), el("span", { class: "tile__state" })),
  );
}

function personActions(person, room) {
  const actions = room.actions || [];
  const me = myself();
  if (person.pid === meeting.you || !me) return null;
  const box = el("span", { class: "people__actions" });
  const add = (label, message, action) =>
    box.append(
      el("button", {
        type: "button",
        class: "button button--small",
        text: label,
        "aria-label": `${label}: ${person.name}`,
        "data-action": action || message.type,
        onclick: () => request(message).catch(() => {}),
      }),
    );
  const moderator = ["host", "moderator"].includes(me.role);
  if (!moderator || (person.role === "host" && me.role !== "host")) return null;
  if (actions.includes("mute") && person.audio) {
    add(text.mute_audio, { type: "mute", who: person.pid, audio: true }, "mute-audio");
  }
  if (actions.includes("mute") && (person.video || person.screen)) {
    add(text.mute_video, { type: "mute", who: person.pid, video: true }, "mute-video");
  }
  if (actions.includes("floor") && ["participant", "guest"].includes(person.role)) {
    add(person.floor ? text.take_floor : text.give_floor, { type: "floor", who: person.pid, give: !person.floor });
  }
  if (actions.includes("send_back") && ["participant", "guest"].includes(person.role)) {
    add(text.send_back, { type: "send_back", who: person.pid });
  }
  if (actions.includes("hand_over") && (person.role === "moderator" || (config.kind === "briefing" && person.role === "participant"))) {
    add(text.hand_over, { type: "hand_over", who: person.pid });
  }
  if (actions.includes("remove")) add(text.remove, { type: "remove", who: person.pid });
  return box;
}

function renderPeople(room) {
  const list = $("people-list");
  list.replaceChildren();
  const people = [...room.participants].sort((a, b) => (b.hand ? 1 : 0) - (a.hand ? 1 : 0) || (a.hand ?? 0) - (b.hand ?? 0));
  for (const person of people) {
    const bits = [roleLabel(person.role)];
    if (person.hand) bits.push(`✋ ${text.hand_raised}`);
    if (!person.connected) bits.push(text.away);
    list.append(
      el(
        "li",
        { class: `people__item${person.hand ? " people__item--hand" : ""}`, "data-pid": person.pid },
        el("span", { class: "people__name", text: person.pid === meeting.you ? `${person.name} (${text.you})` : person.name }),
        el("span", { class: "people__meta", text: bits.join(" · ") }),
        personActions(person, room),
      ),
    );
  }
  $("people-count").textContent = String(room.participants.length);
}

function renderHostQueue(room) {
  const panel = $("queue-panel");
  const queue = Array.isArray(room.queue) ? room.queue : null;
  panel.hidden = !queue;
  if (!queue) return;
  const list = $("queue-list");
  list.replaceChildren();
  const now = Date.now() / 1000;
  const seen = new Set();
  for (const person of queue) {
    seen.add(person.pid);
    if (!meeting.knownQueue.has(person.pid)) announce(fmt(text.new_in_queue, { name: person.name }));
    const waited = Math.max(0, Math.floor((now - (person.since || now)) / 60));
    const box = el("span", { class: "people__actions" });
    for (const [label, type] of [[text.admit, "admit"], [text.deny, "deny"]]) {
      box.append(
        el("button", {
          type: "button",
          class: `button button--small${type === "admit" ? " button--primary" : ""}`,
          text: label,
          "aria-label": `${label}: ${person.name}`,
          "data-action": type,
          onclick: () => request({ type, who: person.pid }).catch(() => {}),
        }),
      );
    }
    list.append(
      el(
        "li",
        { class: "people__item", "data-pid": person.pid },
        el("span", { class: "people__name", text: `${person.ticket}. ${person.name}` }),
        el("span", {
          class: "people__meta",
          text: [fmt(text.waiting_since, { n: waited }), person.returning ? text.returning : "", person.connected ? "" : text.away]
            .filter(Boolean)
            .join(" · "),
        }),
        box,
      ),
    );
  }
  meeting.knownQueue = seen;
  $("queue-count").textContent = String(queue.length);
  $("call-next").hidden = !(room.actions || []).includes("call_next");
  $("call-next").disabled = queue.length === 0;
  document.title = queue.length ? `(${queue.length}) ${config.title}` : config.title;
}

function renderControls() {
  const room = meeting.room;
  const me = myself();
  if (!room || !me) return;
  const actions = room.actions || [];
  const publish = mayPublish();
  const set = (id, pressed, visible = true, label = null) => {
    const button = $(id);
    button.hidden = !visible;
    button.setAttribute("aria-pressed", String(pressed));
    if (label) button.textContent = label;
  };
  set("toggle-microphone", meeting.wantAudio && publish, actions.includes("audio"));
  set("toggle-camera", meeting.wantVideo && publish, actions.includes("video"));
  set("toggle-screen", Boolean(meeting.screenTrack), actions.includes("screen") && Boolean(navigator.mediaDevices.getDisplayMedia),
    meeting.screenTrack ? text.stop_screen : text.share_screen);
  $("toggle-microphone").disabled = !publish;
  $("toggle-camera").disabled = !publish;
  $("toggle-screen").disabled = !publish;
  set("toggle-hand", Boolean(me.hand), actions.includes("hand"), me.hand ? text.lower_hand : text.raise_hand);
  set("toggle-lock", room.locked, actions.includes("lock"), room.locked ? text.unlock : text.lock);
  // Only through the forwarding unit: in a mesh the media never reach the server.
  const recordButton = $("toggle-recording");
  recordButton.hidden = !(actions.includes("record") && room.topology === "sfu");
  recordButton.textContent = room.recording ? text.stop_recording : text.start_recording;
  $("end-button").hidden = !actions.includes("end");
  const chat = $("chat-form");
  chat.hidden = !actions.includes("chat");
}

// Tell the room what we send, when it differs from what the room shows
// (or always, with force).
function sendMedia(force = false) {
  if (meeting.status !== "admitted" || !mayPublish()) return;
  const state = {
    audio: Boolean(meeting.wantAudio && meeting.micTrack),
    video: Boolean(meeting.wantVideo && meeting.cameraTrack),
    screen: Boolean(meeting.screenTrack),
  };
  const me = myself();
  const same = me && me.audio === state.audio && me.video === state.video && me.screen === state.screen;
  if (same && !force) return;
  if (meeting.mediaPending === JSON.stringify(state) && !force) return;
  meeting.mediaPending = JSON.stringify(state);
  request({ type: "media", ...state })
    .catch(() => {})
    .finally(() => {
      meeting.mediaPending = null;
    });
}

// --- Controls --------------------------------------------------------------------

async function startScreen() {
  let stream;
  try {
    stream = await navigator.mediaDevices.getDisplayMedia({ video: true });
  } catch {
    return;
  }
  meeting.screenTrack = stream.getVideoTracks()[0];
  meeting.screenTrack.onended = () => stopScreen(true);
  attachAll();
  renderControls();
  sendMedia();
}

function stopScreen(tell) {
  if (!meeting.screenTrack) return;
  meeting.screenTrack.stop();
  meeting.screenTrack = null;
  attachAll();
  renderControls();
  if (tell) sendMedia();
}

const controls = {
  microphone() {
    meeting.wantAudio = !meeting.wantAudio;
    applyWanted();
    renderControls();
    sendMedia();
  },
  camera() {
    meeting.wantVideo = !meeting.wantVideo;
    applyWanted();
    attachAll();
    renderControls();
    sendMedia();
  },
  screen() {
    if (meeting.screenTrack) stopScreen(true);
    else startScreen();
  },
  hand() {
    request({ type: "hand", raised: !myself()?.hand }).catch(() => {});
  },
  lock() {
    request({ type: "lock", locked: !meeting.room.locked }).catch(() => {});
  },
  record() {
    if (meeting.recordPending) return; // one request at a time: a double click asks once
    meeting.recordPending = true;
    request({ type: "record", on: !meeting.room.recording })
      .catch(() => {})
      .finally(() => {
        meeting.recordPending = false;
      });
  },
  call_next() {
    const button = $("call-next");
    if (button.disabled) return;
    button.disabled = true;
    // Who we see in the call: a second click after the first took effect is refused.
    const current = (meeting.room.participants || [])
      .filter((p) => p.role === "participant" || p.role === "guest")
      .map((p) => p.pid);
    request({ type: "call_next", current })
      .catch(() => {})
      .finally(() => {
        button.disabled = (meeting.room?.queue || []).length === 0;
      });
  },
  leave() {
    if (!meeting.hub) {
      finish("");
      return;
    }
    request({ type: "leave" }).catch(() => finish(""));
  },
  end() {
    if (window.confirm(text.confirm_end)) request({ type: "end" }).catch(() => {});
  },
};

document.addEventListener("click", (event) => {
  const button = event.target.closest("[data-action]");
  if (!button || !root.contains(button)) return;
  const control = controls[button.dataset.action];
  if (control) control();
});

// --- Chat ------------------------------------------------------------------------

function addChat(message) {
  const log = $("chat-log");
  const existing = log.querySelector(`[data-message="${Number(message.id)}"]`);
  const me = myself();
  const moderator = me && ["host", "moderator"].includes(me.role);
  if (message.status === "rejected" && message.pid !== meeting.you && !moderator) {
    existing?.remove();
    return;
  }
  const time = new Date(message.at * 1000).toLocaleTimeString(document.documentElement.lang, {
    hour: "2-digit",
    minute: "2-digit",
  });
  const item = el(
    "li",
    { class: `chat__item chat__item--${message.status}`, "data-message": String(Number(message.id)) },
    el("span", { class: "chat__meta" }, el("strong", { text: message.name }), ` ${time}`),
    el("p", { class: "chat__text", text: message.text }),
  );
  if (message.status === "pending") {
    item.append(el("span", { class: "chat__pending", text: text.question_pending }));
    if (moderator) {
      for (const [label, publish] of [[text.publish, true], [text.reject, false]]) {
        item.append(
          el("button", {
            type: "button",
            class: "button button--small",
            text: label,
            "aria-label": `${label}: ${message.name}, ${message.text.slice(0, 60)}`,
            onclick: () => request({ type: "approve", message: message.id, publish }).catch(() => {}),
          }),
        );
      }
    }
  }
  if (existing) existing.replaceWith(item);
  else log.append(item);
  log.scrollTop = log.scrollHeight;
  if (!existing && message.pid !== meeting.you && !meeting.chatIds.has(message.id)) {
    announce(fmt(text.new_message, { name: message.name }));
  }
  meeting.chatIds.add(message.id);
}

$("chat-form")?.addEventListener("submit", (event) => {
  event.preventDefault();
  const input = $("chat-input");
  const value = input.value.trim();
  if (!value) return;
  request({ type: "chat", text: value }).then(() => (input.value = ""), () => {});
});

$("chat-input")?.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    $("chat-form").requestSubmit();
  }
});

// --- Connection quality ----------------------------------------------------------

const QUALITY = { good: 0, fair: 1, poor: 2, offline: 3 };

function setQuality(level) {
  const box = $("quality");
  if (!box || box.dataset.level === level) return;
  box.dataset.level = level;
  $("quality-text").textContent = text[level];
  if (level === "poor") announce(text.poor);
}

const lastStats = new Map();

async function measure() {
  if (meeting.status !== "admitted" || meeting.over) return;
  let worst = "good";
  let loudest = null;
  let loudestLevel = 0.02;
  const connections = [...meeting.links].map(([pid, { link }]) => [pid, link]);
  if (meeting.sfu) {
    // Through the unit: our publication (its round trip) and each subscription.
    if (meeting.sfu.publisher) connections.push(["sfu:", meeting.sfu.publisher]);
    for (const [pid, { link }] of meeting.sfu.subs) connections.push([`sfu:${pid}`, link]);
  }
  for (const [key, link] of connections) {
    const pid = key.startsWith("sfu:") ? key.slice(4) : key;
    const report = await link.stats();
    if (!report) continue;
    let rtt = null;
    let lost = 0;
    let received = 0;
    report.forEach((stat) => {
      if (stat.type === "candidate-pair" && stat.nominated && stat.currentRoundTripTime != null) {
        rtt = stat.currentRoundTripTime;
      }
      if (stat.type === "inbound-rtp") {
        lost += stat.packetsLost || 0;
        received += stat.packetsReceived || 0;
        if (stat.kind === "audio" && (stat.audioLevel || 0) > loudestLevel) {
          loudestLevel = stat.audioLevel;
          loudest = pid;
        }
      }
    });
    const previous = lastStats.get(key) || { lost: 0, received: 0 };
    lastStats.set(key, { lost, received });
    const dLost = Math.max(0, lost - previous.lost);
    const dReceived = Math.max(0, received - previous.received);
    const loss = dLost + dReceived > 0 ? dLost / (dLost + dReceived) : 0;
    let level = "good";
    if (loss > 0.08 || (rtt !== null && rtt > 0.6)) level = "poor";
    else if (loss > 0.02 || (rtt !== null && rtt > 0.3)) level = "fair";
    if (QUALITY[level] > QUALITY[worst]) worst = level;
  }
  if ($("quality").dataset.level !== "offline" || meeting.hub?.state === "open") setQuality(worst);
  for (const [pid, tile] of meeting.tiles) tile.classList.toggle("tile--speaking", pid === loudest);
}

window.setInterval(() => measure().catch(() => {}), 2000);
// The switch to the unit also waits for videos to play: look again now and then.
window.setInterval(() => {
  if (meeting.sfu && !meeting.over) switchOver();
}, 500);

// --- Start -----------------------------------------------------------------------

if ($("prejoin-form")) {
  $("prejoin-form").addEventListener("submit", join);
  $("prejoin-camera").addEventListener("change", (event) => {
    meeting.wantVideo = event.target.checked;
    applyWanted();
  });
  $("prejoin-microphone").addEventListener("change", (event) => {
    meeting.wantAudio = event.target.checked;
    applyWanted();
  });
  for (const id of ["camera-select", "microphone-select"]) {
    $(id).addEventListener("change", () =>
      startDevices({ audioId: $("microphone-select").value, videoId: $("camera-select").value }),
    );
  }
  navigator.mediaDevices?.addEventListener?.("devicechange", () => listDevices());
  if (navigator.mediaDevices?.getUserMedia) startDevices();
  else {
    $("preview-note").textContent = text.no_devices;
    $("preview-note").hidden = false;
  }
}
