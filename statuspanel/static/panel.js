// compose-agent status panel: progressive enhancement over the server-rendered pages.
// Plain JavaScript, no dependencies. Every POST carries the session's CSRF token in a header.
(function () {
  "use strict";

  var csrfMeta = document.querySelector('meta[name="csrf-token"]');
  var CSRF = csrfMeta ? csrfMeta.getAttribute("content") : "";
  var REFRESH_MS = 4000;
  var FOLLOW_MS = 2000;
  var MAX_LOG_LINES = 5000;

  function post(url, body, extraHeaders) {
    var headers = { "Content-Type": "application/json", "X-CSRF-Token": CSRF, "Accept": "application/json" };
    Object.assign(headers, extraHeaders || {});
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: headers,
      body: body === undefined ? "" : JSON.stringify(body),
    });
  }

  function sleep(ms) {
    return new Promise(function (resolve) { setTimeout(resolve, ms); });
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

  function toast(kind, title, body, link) {
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
    if (link) {
      var a = document.createElement("a");
      a.className = "toast-link";
      a.href = link.href;
      a.textContent = link.text;
      a.setAttribute("data-testid", "action-result-link");
      el.appendChild(a);
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
    var what = button.dataset.rollback ? "rollback:" + button.dataset.rollback : button.dataset.action;
    return [button.dataset.project, button.dataset.service || "", what].join("|");
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
    dashboard.querySelectorAll("[data-action], [data-rollback]").forEach(function (button) {
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
        window.location.assign("/login?next=" + encodeURIComponent(window.location.pathname));
        return;
      }
      if (response.ok) {
        // Disclosures a person opened stay open across the refresh.
        var open = Array.prototype.map.call(dashboard.querySelectorAll("details[open][data-testid]"),
          function (d) { return d.dataset.testid; });
        dashboard.innerHTML = await response.text();
        open.forEach(function (id) {
          var again = dashboard.querySelector('details[data-testid="' + CSS.escape(id) + '"]');
          if (again) again.open = true;
        });
        updateApprovalsBadge();
        applyPending();
      }
    } catch (e) {
      // The panel itself is unreachable; the next tick tries again.
    } finally {
      refreshing = false;
    }
  }

  // The nav's badge follows the count each refreshed part carries.
  function updateApprovalsBadge() {
    var badge = document.querySelector("[data-approvals-badge]");
    var count = dashboard && dashboard.querySelector("[data-pending-approvals]");
    if (!badge || !count) return;
    var n = parseInt(count.getAttribute("data-pending-approvals"), 10) || 0;
    badge.textContent = String(n);
    badge.hidden = n === 0;
  }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  // ---- plans: what up would do, what down would take ----------------------------------------
  var ACTION_TONE = { create: "ok", recreate: "warn", start: "ok", remove: "bad", unchanged: "muted" };

  function violationText(v) {
    var where = v.service ? "service '" + v.service + "'" : "the stack";
    return v.rule + ": " + where + ": " + v.value + " (the operator can allow it with " + v.allow + ")";
  }

  function renderPlan(box, plan, kind) {
    box.textContent = "";
    if (kind === "up") {
      if (plan.policy && !plan.policy.allowed) {
        var refused = el("div", "plan-refused");
        refused.setAttribute("data-testid", "plan-refused");
        refused.appendChild(el("strong", null, "The policy guard refuses this stack: up will change nothing."));
        var reasons = el("ul");
        (plan.policy.violations || []).forEach(function (v) { reasons.appendChild(el("li", null, violationText(v))); });
        if (plan.policy.error) reasons.appendChild(el("li", null, plan.policy.error));
        refused.appendChild(reasons);
        box.appendChild(refused);
      }
      var list = el("ul", "plan-list");
      (plan.actions || []).forEach(function (a) {
        var item = el("li");
        item.setAttribute("data-testid", "plan-action-" + a.service);
        item.appendChild(el("span", "svc-name", a.service));
        item.appendChild(el("span", "badge badge-" + (ACTION_TONE[a.action] || "muted"), a.action));
        item.appendChild(el("span", "plan-reason", a.reason));
        list.appendChild(item);
      });
      if (!list.children.length) list.appendChild(el("li", "plan-note", "No services."));
      box.appendChild(list);
    } else {
      var down = plan.down || { containers: [], volumes: [] };
      box.appendChild(el("div", "plan-heading", down.containers.length
        ? "Removes " + down.containers.length + " container" + (down.containers.length === 1 ? "" : "s") + ":"
        : "No containers to remove."));
      var containers = el("ul", "plan-list");
      down.containers.forEach(function (name) { containers.appendChild(el("li", "mono small", name)); });
      box.appendChild(containers);
      if (down.volumes.length) {
        box.appendChild(el("div", "plan-heading", "Volumes:"));
        var volumes = el("ul", "plan-list");
        down.volumes.forEach(function (v) {
          var item = el("li");
          item.setAttribute("data-testid", "plan-volume-" + v.name);
          item.appendChild(el("span", "mono small", v.name));
          item.appendChild(el("span", "plan-reason", v.removed_by_down_volumes
            ? "kept, unless you tick the box below: then it and its data are deleted"
            : "kept either way (" + v.kind + ")"));
          volumes.appendChild(item);
        });
        box.appendChild(volumes);
      }
    }
    (plan.warnings || []).forEach(function (w) { box.appendChild(el("div", "plan-note", w)); });
  }

  async function loadPlan(box, project, kind) {
    box.textContent = "Asking the compose-agent for a plan\u2026";
    box.setAttribute("data-state", "loading");
    try {
      var response = await fetch("/api/v1/stacks/" + encodeURIComponent(project) + "/plan",
        { credentials: "same-origin", headers: { "Accept": "application/json" } });
      var payload = await readJson(response);
      if (box.dataset.project !== project) return; // the dialog moved on to another stack
      if (response.ok && payload) {
        renderPlan(box, payload, kind);
      } else {
        box.textContent = "";
        box.appendChild(el("div", "plan-note", "No plan: " + errorText(payload, response)));
      }
    } catch (e) {
      box.textContent = "No plan: the status panel did not answer.";
    } finally {
      box.setAttribute("data-state", "done");
    }
  }

  // ---- long actions run as tasks: the panel answers with a handle, the page follows it --------------
  var TASK_POLL_MAX_MS = 1000;

  function showProgress(note, task) {
    if (!note) return;
    var body = note.querySelector("[data-testid=action-progress]");
    if (!body) {
      body = document.createElement("div");
      body.className = "toast-body mono small";
      body.setAttribute("data-testid", "action-progress");
      note.appendChild(body);
    }
    body.textContent = task.message || "working\u2026";
    if (task.task && !note.querySelector("[data-task-stop]")) {
      var stop = document.createElement("button");
      stop.type = "button";
      stop.className = "btn btn-xs";
      stop.setAttribute("data-task-stop", task.task);
      stop.setAttribute("data-testid", "action-stop");
      stop.textContent = "Stop";
      stop.title = "Stop Compose where it is; nothing is undone";
      stop.addEventListener("click", function () {
        stop.disabled = true;
        post("/api/v1/tasks/" + encodeURIComponent(task.task) + "/cancel");
      });
      note.appendChild(stop);
    }
  }

  // Poll the task until it ends; answers as the action's own route would have (status, payload).
  async function follow(task, note) {
    var pause = 250;
    while (task.task && task.status === "working") {
      showProgress(note, task);
      await sleep(pause);
      pause = Math.min(pause * 2, TASK_POLL_MAX_MS);
      var response = await fetch("/api/v1/tasks/" + encodeURIComponent(task.task),
        { credentials: "same-origin", headers: { "Accept": "application/json" } });
      var next = await readJson(response);
      if (!response.ok || !next) return { status: response.status, payload: next, response: response };
      task = next;
    }
    if (task.result) return { status: 200, payload: task.result, response: null };
    if (task.status === "cancelled" && !task.error_status) task.error_status = 502;
    return { status: task.error_status || 502, payload: task, response: null };
  }

  // ---- sending actions -----------------------------------------------------------------------
  var gatewayDialog = document.getElementById("confirm-gateway");
  var gatewayRetry = null;

  if (gatewayDialog) {
    gatewayDialog.addEventListener("close", function () {
      var retry = gatewayRetry;
      gatewayRetry = null;
      if (gatewayDialog.returnValue === "confirm" && retry) retry();
    });
  }

  // The operator's policy.confirm: show the compose-agent's own plan, and send its token if confirmed.
  function askGateway(payload, retry) {
    if (!gatewayDialog || typeof gatewayDialog.showModal !== "function") return false;
    gatewayRetry = retry;
    gatewayDialog.returnValue = "";
    gatewayDialog.querySelector("[data-gateway-plan]").textContent = payload.error || "";
    gatewayDialog.showModal();
    gatewayDialog.querySelector('[value="cancel"]').focus();
    return true;
  }

  async function send(key, url, body, label, button) {
    if (pending[key]) return;
    pending[key] = true;
    applyPending();
    var note = toast("pending", label + "\u2026", null);
    try {
      var response = await post(url, body, { "Prefer": "respond-async" });
      var payload = await readJson(response);
      var status = response.status;
      if (response.ok && payload && "task" in payload && "status" in payload) {
        var ended = await follow(payload, note);
        status = ended.status;
        payload = ended.payload;
        if (ended.response) response = ended.response;
      }
      if (note) note.remove();
      if (status === 200 && payload && (payload.ok || payload.action === "rollback")) {
        var secs = (payload.duration_ms / 1000).toFixed(1);
        toast("ok", label + " \u2014 done in " + secs + " s", payload.message || null);
      } else if (status === 401) {
        window.location.assign("/login?next=" + encodeURIComponent(window.location.pathname));
      } else if (status === 409 && payload && payload.confirmation_required && payload.confirm) {
        var token = payload.confirm;
        var asked = askGateway(payload, function () {
          send(key, url, Object.assign({}, body, { confirm: token }), label, button);
        });
        if (!asked) toast("bad", label + " \u2014 needs confirmation", errorText(payload, response));
      } else if (status === 409 && payload && payload.approval_required && payload.page) {
        // Nothing ran: another person decides, on the approval's page.
        toast("pending", label + " \u2014 waits for a person's approval", null,
          { href: payload.page, text: "Open the approval" });
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

  // A person's decision on a change that waits.
  function decide(button) {
    var id = button.dataset.approval;
    var decision = button.dataset.decide;
    var key = "approval|" + id;
    if (pending[key]) return;
    pending[key] = true;
    button.disabled = true;
    post("/api/v1/approvals/" + encodeURIComponent(id) + "/" + decision).then(async function (response) {
      var payload = await readJson(response);
      if (response.ok) {
        toast("ok", (decision === "approve" ? "Approved" : "Rejected") + ": " + payload.tool + " on " + payload.project,
          decision === "approve" ? "The caller that asked may now repeat its call, once." : null);
      } else if (response.status === 401) {
        window.location.assign("/login?next=" + encodeURIComponent(window.location.pathname));
      } else {
        toast("bad", decision + " \u2014 refused", errorText(payload, response));
      }
    }, function (e) {
      toast("bad", decision + " \u2014 failed", "The status panel did not answer: " + e.message);
    }).finally(function () {
      delete pending[key];
      refreshDashboard();
    });
  }

  // The person who asked sends their approved change again: it acts once.
  function runApproved(button) {
    var id = button.dataset.run;
    var key = "approval|" + id;
    if (pending[key]) return;
    pending[key] = true;
    button.disabled = true;
    var note = toast("pending", "Going ahead\u2026", null);
    post("/api/v1/approvals/" + encodeURIComponent(id) + "/run").then(async function (response) {
      var payload = await readJson(response);
      if (note) note.remove();
      if (response.ok && payload) toast("ok", (payload.message || "done"), null);
      else toast("bad", "Going ahead \u2014 refused", errorText(payload, response));
    }, function (e) {
      if (note) note.remove();
      toast("bad", "Going ahead \u2014 failed", "The status panel did not answer: " + e.message);
    }).finally(function () {
      delete pending[key];
      refreshDashboard();
    });
  }

  function runAction(button, extra) {
    var project = button.dataset.project;
    var service = button.dataset.service;
    var action = button.dataset.action;
    var body = {};
    if (service) body.services = [service];
    if (extra) Object.assign(body, extra);
    var label = action + " " + project + (service ? "/" + service : "");
    var url = "/api/v1/stacks/" + encodeURIComponent(project) + "/" + action;
    return send(keyOf(button), url, body, label, button);
  }

  function runRollback(button) {
    var project = button.dataset.project;
    var version = parseInt(button.dataset.rollback, 10);
    var url = "/api/v1/stacks/" + encodeURIComponent(project) + "/rollback";
    return send(keyOf(button), url, { version: version }, "roll back " + project + " to v" + version, button);
  }

  // ---- the confirmation dialogs --------------------------------------------------------------
  var dialogs = {
    up: document.getElementById("confirm-up"),
    down: document.getElementById("confirm-down"),
    rollback: document.getElementById("confirm-rollback"),
  };
  var dialogButton = null;

  Object.keys(dialogs).forEach(function (kind) {
    var dialog = dialogs[kind];
    if (!dialog) return;
    dialog.addEventListener("close", function () {
      var button = dialogButton;
      dialogButton = null;
      if (dialog.returnValue !== "confirm" || !button) return;
      if (kind === "down") runAction(button, { volumes: dialog.querySelector('input[name="volumes"]').checked });
      else if (kind === "rollback") runRollback(button);
      else runAction(button, null);
    });
  });

  function openDialog(kind, button) {
    var dialog = dialogs[kind];
    if (!dialog || typeof dialog.showModal !== "function") return false;
    dialogButton = button;
    dialog.returnValue = "";
    dialog.querySelector("[data-confirm-project]").textContent = button.dataset.project;
    var version = dialog.querySelector("[data-confirm-version]");
    if (version) version.textContent = button.dataset.rollback;
    var volumes = dialog.querySelector('input[name="volumes"]');
    if (volumes) volumes.checked = false;
    var box = dialog.querySelector("[data-plan]");
    if (box) {
      box.dataset.project = button.dataset.project;
      loadPlan(box, button.dataset.project, kind);
    }
    dialog.showModal();
    dialog.querySelector('[value="cancel"]').focus();
    return true;
  }

  if (dashboard) {
    dashboard.addEventListener("click", function (event) {
      var decision = event.target.closest("button[data-decide]");
      if (decision) {
        if (!decision.disabled) decide(decision);
        return;
      }
      var run = event.target.closest("button[data-run]");
      if (run) {
        if (!run.disabled) runApproved(run);
        return;
      }
      var rollback = event.target.closest("button[data-rollback]");
      if (rollback && !rollback.disabled) {
        if (!openDialog("rollback", rollback)) runRollback(rollback);
        return;
      }
      var button = event.target.closest("button[data-action]");
      if (!button || button.disabled) return;
      var action = button.dataset.action;
      // The whole stack's up and down show the plan first; a single service's buttons act at once.
      if ((action === "down" || action === "up") && !button.dataset.service && openDialog(action, button)) return;
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
