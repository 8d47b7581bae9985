// The live banner of crisis alerts on every page (alerts/live.py): the page
// comes with the alerts in force; this follows the topic "public.alerts" on
// the broadcast path and adds, replaces or removes them. After missed events
// it reloads the list from /alerts/current.json. Text is always set with
// textContent: nothing received is parsed as HTML.

import { HubSocket } from "/static/hub/js/realtime.js";

const banner = document.getElementById("live-banner");
const text = JSON.parse(document.getElementById("live-banner-text")?.textContent || "{}");

function item(alert) {
  const p = document.createElement("p");
  p.className = "live-banner__item";
  p.dataset.identifier = alert.identifier;
  p.dataset.severity = alert.severity;
  const label = document.createElement("strong");
  label.textContent = `${text[alert.severity] || text.Unknown || ""}:`;
  const link = document.createElement("a");
  link.href = alert.url;
  link.textContent = text.more || "";
  p.append(label, ` ${alert.headline} — `, link);
  return p;
}

function find(identifier) {
  return [...banner.querySelectorAll(".live-banner__item")].find(
    (p) => p.dataset.identifier === identifier,
  );
}

function show(alert) {
  const existing = find(alert.identifier);
  const fresh = item(alert);
  if (existing) existing.replaceWith(fresh);
  else if (alert.severity === "Extreme" || alert.severity === "Severe") banner.prepend(fresh);
  else banner.append(fresh);
  banner.hidden = false;
}

function end(identifier) {
  find(identifier)?.remove();
  banner.hidden = !banner.querySelector(".live-banner__item");
}

async function reload() {
  try {
    const response = await fetch("/alerts/current.json", { credentials: "same-origin" });
    if (!response.ok) return;
    const { alerts } = await response.json();
    banner.replaceChildren();
    alerts.forEach(show);
    banner.hidden = alerts.length === 0;
  } catch {
    // Offline: the next reconnect tries again.
  }
}

if (banner) {
  const hub = new HubSocket("/ws/live/", {
    onEvent: (frame) => {
      if (frame.type === "alert.current") show(frame.data);
      else if (frame.type === "alert.ended") end(frame.data.identifier);
    },
    onGap: () => reload(),
  });
  hub.subscribe(["public.alerts"]).catch(() => {});
  window.egminaBanner = { hub, reload };
}
