// compose-agent status panel: progressive enhancement over the server-rendered pages.
// Plain JavaScript, no dependencies. Every POST carries the session's CSRF token in a header.
(function () {
  "use strict";

  var csrfMeta = document.querySelector('meta[name="csrf-token"]');
  var CSRF = csrfMeta ? csrfMeta.getAttribute("content") : "";
  var REFRESH_MS = 4000;
  var FOLLOW_MS = 2000;
  var MAX_LOG_LINES = 5000;

  function post(url, body) {
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": CSRF, "Accept": "application/json" },
      body: body === undefined ? "" : JSON.stringify(body),
    });
  }

  function errorText(payload, response) {
    if (payload && payload.error) {
      return payload.detail ? payload.error + ": " + payload.detail : payload.error;
    }
    return "HTTP " + response.status + " " + response.statusText;
  }

  async function readJson(response) {
    try { return await response.json(); } catch (e) { return null; }
  }

  // ---- logout -----------------------------------------------------------------------------
  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-logout]");
    if (!button) return;
    post("/logout").finally(function () { window.location.assign("/login"); });
  });

  // ---- toasts: the outcome of each action ----------------------------------------------------
  var toasts = document.getElementById("toasts");

  function toast(kind, title, body) {
    if (!toasts) return null;
    var el = document.createElement("div");
    el.className = "toast toast-" + kind;
    el.setAttribute("data-testid", "action-result");
    el.setAttribute("data-outcome", kind);
    var t = document.createElement("div");
    t.className = "toast-title";
    t.textContent = title;
    var close = document.createElement("button");
    close.className = "toast-close";
    close.type = "button";
    close.setAttribute("aria-label", "Dismiss");
    close.textContent = "\u00d7";
    close.addEventListener("click", function () { el.remove(); });
    el.appendChild(t);
    el.appendChild(close);
    if (body) {
      var b = document.createElement("div");
      b.className = "toast-body";
      b.textContent = body;
      el.appendChild(b);
    }
    toasts.appendChild(el);
    while (toasts.children.length > 4) toasts.firstElementChild.remove();
    if (kind === "ok") setTimeout(function () { el.remove(); }, 8000);
    return el;
  }

  // ---- dashboard ----------------------------------------------------------------------------
  var dashboard = document.getElementById("dashboard");
  var pending = {}; // "project|service|action" -> true while the request runs
  var refreshing = false;

  function keyOf(button) {
    return [button.dataset.project, button.dataset.service || "", button.dataset.action].join("|");
  }

  var filter = document.getElementById("stack-filter");

  function applyFilter() {
    if (!dashboard || !filter) return;
    var needle = filter.value.trim().toLowerCase();
    dashboard.querySelectorAll("[data-stack]").forEach(function (card) {
      card.hidden = !!needle && card.dataset.stack.toLowerCase().indexOf(needle) === -1;
    });
  }

  if (filter) {
    filter.addEventListener("input", function () {
      applyFilter();
      var url = new URL(window.location.href);
      if (filter.value) url.searchParams.set("q", filter.value); else url.searchParams.delete("q");
      history.replaceState(null, "", url);
    });
  }

  function applyPending() {
    applyFilter();
    if (!dashboard) return;
    dashboard.querySelectorAll("[data-action]").forEach(function (button) {
      var busy = !!pending[keyOf(button)];
      button.classList.toggle("busy", busy);
      button.setAttribute("aria-busy", busy ? "true" : "false");
      if (busy) button.disabled = true;
    });
  }

  async function refreshDashboard() {
    if (!dashboard || refreshing) return;
    refreshing = true;
    try {
      var response = await fetch(dashboard.dataset.refresh, { credentials: "same-origin", headers: { "Accept": "text/html" } });
      if (response.redirected && response.url.indexOf("/login") !== -1) {
        window.location.assign("/login?next=/");
        return;
      }
      if (response.ok) {
        dashboard.innerHTML = await response.text();
        applyPending();
      }
    } catch (e) {
      // The panel itself is unreachable; the next tick tries again.
    } finally {
      refreshing = false;
    }
  }

  async function runAction(button, extra) {
    var project = button.dataset.project;
    var service = button.dataset.service;
    var action = button.dataset.action;
    var key = keyOf(button);
    if (pending[key]) return;
    var body = {};
    if (service) body.services = [service];
    if (extra) Object.assign(body, extra);
    var label = action + " " + project + (service ? "/" + service : "");
    pending[key] = true;
    applyPending();
    var note = toast("pending", label + "\u2026", null);
    try {
      var response = await post("/api/v1/stacks/" + encodeURIComponent(project) + "/" + action, body);
      var payload = await readJson(response);
      if (note) note.remove();
      if (response.ok && payload && payload.ok) {
        var secs = (payload.duration_ms / 1000).toFixed(1);
        toast("ok", label + " \u2014 done in " + secs + " s", payload.message || null);
      } else if (response.status === 401) {
        window.location.assign("/login?next=/");
      } else {
        toast("bad", label + " \u2014 failed", errorText(payload, response));
      }
    } catch (e) {
      if (note) note.remove();
      toast("bad", label + " \u2014 failed", "The status panel did not answer: " + e.message);
    } finally {
      delete pending[key];
      await refreshDashboard();
      applyPending();
    }
  }

  var dialog = document.getElementById("confirm-down");
  var dialogButton = null;

  if (dialog) {
    dialog.addEventListener("close", function () {
      var button = dialogButton;
      dialogButton = null;
      if (dialog.returnValue === "confirm" && button) {
        var volumes = dialog.querySelector('input[name="volumes"]').checked;
        runAction(button, { volumes: volumes });
      }
    });
  }

  if (dashboard) {
    dashboard.addEventListener("click", function (event) {
      var button = event.target.closest("button[data-action]");
      if (!button || button.disabled) return;
      if (button.dataset.action === "down" && dialog && typeof dialog.showModal === "function") {
        dialogButton = button;
        dialog.returnValue = "";
        dialog.querySelector("[data-confirm-project]").textContent = button.dataset.project;
        dialog.querySelector('input[name="volumes"]').checked = false;
        dialog.showModal();
        dialog.querySelector('[value="cancel"]').focus();
        return;
      }
      runAction(button, null);
    });
    applyFilter();
    setInterval(function () { if (!document.hidden) refreshDashboard(); }, REFRESH_MS);
    document.addEventListener("visibilitychange", function () { if (!document.hidden) refreshDashboard(); });
  }

  // ---- log viewer ---------------------------------------------------------------------------
  var logForm = document.getElementById("log-form");
  if (logForm) {
    var output = document.querySelector('[data-testid="log-output"]');
    var status = document.querySelector('[data-testid="log-status"]');
    var followTimer = null;
    var since = null;
    var loading = false;
    // A request made while one is in flight runs after it; a full reload wins over an append.
    var pending = null;

    function query(extra) {
      var data = new FormData(logForm);
      var params = new URLSearchParams();
      var service = data.get("services");
      if (service) params.set("services", service);
      params.set("tail", data.get("tail") || "200");
      var grep = data.get("grep");
      if (grep) params.set("grep", grep);
      Object.keys(extra || {}).forEach(function (k) { params.set(k, extra[k]); });
      return "/api/v1/stacks/" + encodeURIComponent(logForm.dataset.project) + "/logs?" + params.toString();
    }

    function highlight(text, pattern) {
      var fragment = document.createDocumentFragment();
      var re = null;
      if (pattern) { try { re = new RegExp(pattern, "gm"); } catch (e) { re = null; } }
      if (!re) { fragment.appendChild(document.createTextNode(text)); return fragment; }
      var last = 0;
      text.replace(re, function (match) {
        var index = arguments[arguments.length - 2];
        if (!match) return match;
        fragment.appendChild(document.createTextNode(text.slice(last, index)));
        var mark = document.createElement("mark");
        mark.textContent = match;
        fragment.appendChild(mark);
        last = index + match.length;
        return match;
      });
      fragment.appendChild(document.createTextNode(text.slice(last)));
      return fragment;
    }

    function trimLines() {
      var text = output.textContent;
      var lines = text.split("\n");
      if (lines.length > MAX_LOG_LINES) {
        output.textContent = lines.slice(lines.length - MAX_LOG_LINES).join("\n");
      }
    }

    async function load(append) {
      if (loading) {
        pending = pending === false ? false : append;
        return;
      }
      loading = true;
      var url = append && since ? query({ since: since }) : query();
      try {
        var response = await fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } });
        var payload = await readJson(response);
        if (!response.ok) {
          status.textContent = errorText(payload, response);
          status.classList.add("log-error");
          return;
        }
        status.classList.remove("log-error");
        since = response.headers.get("X-Panel-Time") || since;
        var grep = new FormData(logForm).get("grep");
        var atBottom = output.scrollHeight - output.scrollTop - output.clientHeight < 40;
        if (!append) output.textContent = "";
        if (payload.text) {
          var text = payload.text.endsWith("\n") ? payload.text : payload.text + "\n";
          output.appendChild(highlight(text, grep));
          if (append) trimLines();
        }
        if (!append || atBottom) output.scrollTop = output.scrollHeight;
        var when = new Date().toLocaleTimeString();
        var shown = output.textContent ? output.textContent.replace(/\n$/, "").split("\n").length : 0;
        status.textContent = shown + " line" + (shown === 1 ? "" : "s") +
          (payload.truncated ? " (older lines dropped: " + payload.dropped_lines + ")" : "") +
          (followTimer ? " \u00b7 following" : "") + " \u00b7 updated " + when;
      } catch (e) {
        status.textContent = "The status panel did not answer: " + e.message;
      } finally {
        loading = false;
        if (pending !== null) {
          var next = pending;
          pending = null;
          load(next);
        }
      }
    }

    function setFollow(on) {
      if (followTimer) { clearInterval(followTimer); followTimer = null; }
      if (on) followTimer = setInterval(function () { if (!document.hidden) load(true); }, FOLLOW_MS);
    }

    logForm.addEventListener("submit", function (event) {
      event.preventDefault();
      since = null;
      load(false);
    });
    logForm.querySelector('[name="follow"]').addEventListener("change", function (event) {
      setFollow(event.target.checked);
      if (event.target.checked) load(true);
    });
    load(false);
  }
})();
