// Browser notifications of crisis alerts (Web Push), on the subscribe page
// (alerts/templates/alerts/_push.html). Asks for the permission only when
// the button is pressed, subscribes with the server's VAPID key and sends the
// subscription with the areas and categories ticked in the form and the
// consent (alerts.push_views). Nothing is asked of the browser until an area
// and the consent box (#id_consent) are ticked. The section stays hidden where
// the browser cannot receive push messages, or when the server has Web Push
// off (the key is 404).

const section = document.getElementById("push-section");
const text = Object.fromEntries(
  [...(section?.querySelectorAll("[data-message]") || [])].map((span) => [
    span.dataset.message,
    span.textContent,
  ]),
);

function base64UrlToBytes(value) {
  const padded = (value + "===".slice((value.length + 3) % 4)).replace(/-/g, "+").replace(/_/g, "/");
  return Uint8Array.from(atob(padded), (char) => char.charCodeAt(0));
}

function sameKey(subscription, key) {
  const current = subscription.options?.applicationServerKey;
  if (!current) return true; // the browser does not say: keep it
  const a = new Uint8Array(current);
  return a.length === key.length && a.every((byte, i) => byte === key[i]);
}

function checked(form, name) {
  return [...form.querySelectorAll(`input[name="${name}"]:checked`)].map((input) => input.value);
}

function csrfToken() {
  const field = document.querySelector('input[name="csrfmiddlewaretoken"]');
  if (field) return field.value;
  const cookie = document.cookie.split("; ").find((pair) => pair.startsWith("csrftoken="));
  return cookie ? decodeURIComponent(cookie.slice("csrftoken=".length)) : "";
}

async function post(url, body) {
  const response = await fetch(url, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken() },
    body: JSON.stringify(body),
  });
  let data = {};
  try {
    data = await response.json();
  } catch (error) {
    // a page instead of JSON (e.g. the CSRF check): the generic message
  }
  return { ok: response.ok && data.ok, data };
}

async function start() {
  if (!section) return;
  if (!("serviceWorker" in navigator) || !("PushManager" in window) || !("Notification" in window)) {
    return;
  }
  const { keyUrl, subscribeUrl, unsubscribeUrl, workerUrl } = section.dataset;
  let key;
  try {
    const response = await fetch(keyUrl, { credentials: "same-origin" });
    if (!response.ok) return; // Web Push is off on this server
    key = base64UrlToBytes((await response.json()).publicKey);
  } catch (error) {
    return;
  }

  const button = section.querySelector("#push-button");
  const off = section.querySelector("#push-off");
  const status = section.querySelector("#push-status");
  const form = document.querySelector('form input[name="areas"]')?.form || document;

  function say(message, { link, error = false } = {}) {
    status.textContent = message;
    status.classList.toggle("form-error", error);
    if (link) {
      const a = document.createElement("a");
      a.href = link;
      a.textContent = text.manage;
      status.append(" ", a);
    }
  }

  async function registration() {
    await navigator.serviceWorker.register(workerUrl);
    return navigator.serviceWorker.ready;
  }

  async function turnOn() {
    const areas = checked(form, "areas");
    if (!areas.length) {
      say(text.chooseArea, { error: true });
      document.getElementById("id_areas_0")?.focus();
      return;
    }
    const consent = document.getElementById("id_consent");
    if (!consent?.checked) {
      say(text.needConsent, { error: true });
      consent?.focus();
      return;
    }
    if (Notification.permission === "denied") {
      say(text.blocked, { error: true });
      return;
    }
    button.disabled = true;
    say(text.working);
    try {
      const permission = await Notification.requestPermission();
      if (permission !== "granted") {
        say(permission === "denied" ? text.blocked : text.notAllowed, { error: true });
        return;
      }
      const worker = await registration();
      let subscription = await worker.pushManager.getSubscription();
      if (subscription && !sameKey(subscription, key)) {
        // Made with an older server key: the server forgets it too.
        await post(unsubscribeUrl, subscription.toJSON());
        await subscription.unsubscribe();
        subscription = null;
      }
      if (!subscription) {
        subscription = await worker.pushManager.subscribe({
          userVisibleOnly: true,
          applicationServerKey: key,
        });
      }
      const { ok, data } = await post(subscribeUrl, {
        ...subscription.toJSON(),
        areas,
        categories: checked(form, "categories"),
        consent: true,
      });
      if (!ok) {
        say(data.error?.message || text.failed, { error: true });
        return;
      }
      say(text.done, { link: data.preferences });
      off.hidden = false;
    } catch (error) {
      say(text.failed, { error: true });
    } finally {
      button.disabled = false;
    }
  }

  async function turnOff() {
    off.disabled = true;
    try {
      const worker = await navigator.serviceWorker.getRegistration(workerUrl);
      const subscription = await worker?.pushManager.getSubscription();
      if (subscription) {
        await post(unsubscribeUrl, subscription.toJSON());
        await subscription.unsubscribe();
      }
      say(text.stopped);
      off.hidden = true;
      button.focus();
    } catch (error) {
      say(text.failed, { error: true });
    } finally {
      off.disabled = false;
    }
  }

  button.addEventListener("click", turnOn);
  off.addEventListener("click", turnOff);
  section.hidden = false;

  // Already on in this browser: say so, and offer to turn it off.
  try {
    const existing = await navigator.serviceWorker.getRegistration(workerUrl);
    if (Notification.permission === "granted" && (await existing?.pushManager.getSubscription())) {
      say(text.alreadyOn);
      off.hidden = false;
    }
  } catch (error) {
    // nothing to say
  }
}

start();
