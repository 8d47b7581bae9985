// The service worker of crisis-alert notifications (Web Push), served at
// /alerts/sw.js by alerts.push_views.service_worker, which puts a line
// `const TEXT = {...}` with its few texts in the page's language before this.
// Scope: /alerts/ (the subscribe page and the alert pages).
//
// A message (alerts.push.payload) is JSON: {title, body, url, tag, severity}.
// Severe and Extreme warnings stay on screen until dismissed. A click opens
// the alert's page, or focuses a tab that already shows it; only pages of
// this site are opened, whatever the message says.

/* global TEXT */

const TITLE = (typeof TEXT === "object" && TEXT.fallbackTitle) || "Ostrzeżenie";

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

function sameOrigin(raw) {
  try {
    const url = new URL(raw, self.location.origin);
    if (url.origin === self.location.origin) return url.href;
  } catch (error) {
    // not a URL: the list of alerts below
  }
  return new URL("/alerts/", self.location.origin).href;
}

function messageOf(event) {
  if (!event.data) return {};
  try {
    const data = event.data.json();
    return data && typeof data === "object" ? data : {};
  } catch (error) {
    return { body: event.data.text() };
  }
}

self.addEventListener("push", (event) => {
  const message = messageOf(event);
  const urgent = message.severity === "Severe" || message.severity === "Extreme";
  const title = typeof message.title === "string" && message.title ? message.title : TITLE;
  event.waitUntil(
    self.registration.showNotification(title, {
      body: typeof message.body === "string" ? message.body : "",
      tag: typeof message.tag === "string" && message.tag ? message.tag : "alert",
      renotify: true, // an update of the same alert still alerts
      requireInteraction: urgent,
      lang: "pl",
      dir: "ltr",
      data: { url: sameOrigin(message.url), severity: message.severity || "" },
    }),
  );
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const url = sameOrigin(event.notification.data && event.notification.data.url);
  event.waitUntil(
    (async () => {
      const windows = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
      for (const client of windows) {
        if (client.url === url && "focus" in client) return client.focus();
      }
      return self.clients.openWindow(url);
    })(),
  );
});
