// Tolstoy console: the little that needs a script. Pages are server-rendered and read without
// it in headers mode; this adds API-key sign-in (the key stays in sessionStorage and travels in
// the Authorization header, never a cookie), live refresh by polling, and the actions, which
// call the API's own endpoints and show the API's own messages.
(function () {
  "use strict";

  var KEY = "tolstoy.console.key";
  var USER = "tolstoy.console.user";
  var body = document.body;
  var mode = body.dataset.mode;
  var org = body.dataset.org;
  var timer = null;

  function apiKey() { return sessionStorage.getItem(KEY); }

  // Headers of a page request: the API key in api_key mode (headers mode reads the path's org).
  function pageHeaders() {
    var headers = { "Accept": "text/html" };
    if (mode === "api_key" && apiKey()) { headers.Authorization = "Bearer " + apiKey(); }
    return headers;
  }

  // Headers of an API call: as any API client sends them.
  function apiHeaders() {
    var headers = { "Content-Type": "application/json", "Accept": "application/json" };
    if (mode === "api_key") {
      if (apiKey()) { headers.Authorization = "Bearer " + apiKey(); }
    } else if (org) {
      headers["X-Org-ID"] = org;
    }
    var user = sessionStorage.getItem(USER);
    if (user) { headers["X-User-ID"] = user; }
    return headers;
  }

  function signOut(reason) {
    sessionStorage.removeItem(KEY);
    location.assign("/console" + (reason ? "?signedout=" + encodeURIComponent(reason) : ""));
  }

  function load(url) {
    return fetch(url, { headers: pageHeaders(), credentials: "omit", cache: "no-store" }).then(function (answer) {
      if (answer.status === 401 && mode === "api_key") {
        signOut("expired");
        throw new Error("signed out");
      }
      return answer.text();
    }).then(function (text) {
      return new DOMParser().parseFromString(text, "text/html");
    });
  }

  // Put a freshly fetched page's <main> (and the acting-user picker) in place of ours, keeping
  // the focus and the last action's message.
  function swap(doc) {
    var fresh = doc.getElementById("main");
    var main = document.getElementById("main");
    if (!fresh || !main) { return; }
    var focused = document.activeElement && main.contains(document.activeElement) ? document.activeElement.id : null;
    var result = document.getElementById("action-result");
    var openDetails = Array.prototype.map.call(main.querySelectorAll("details[open][id]"), function (d) { return d.id; });
    fresh = document.adoptNode(fresh);
    main.replaceWith(fresh);
    if (result) {
      var slot = document.getElementById("action-result");
      if (slot) { slot.replaceWith(result); }
    }
    openDetails.forEach(function (id) { var d = document.getElementById(id); if (d) { d.open = true; } });
    var who = document.getElementById("who");
    var freshWho = doc.getElementById("who");
    if (who && freshWho && who.querySelectorAll("option").length < freshWho.querySelectorAll("option").length) {
      who.replaceWith(document.adoptNode(freshWho));
      bindUser();
    }
    if (doc.title) { document.title = doc.title; }
    if (focused && document.getElementById(focused)) { document.getElementById(focused).focus(); }
    bind();
  }

  function refresh() {
    return load(location.href).then(swap);
  }

  // Poll while the page says so: every 2 s with active runs on it, every 10 s on a first page.
  function schedule() {
    clearTimeout(timer);
    var main = document.getElementById("main");
    var live = main && main.dataset.live;
    if (!live) { return; }
    timer = setTimeout(function () {
      // Hidden, or a move's preview on screen (a refresh would replace what the person is reading).
      if (document.hidden || document.querySelector("[data-hold-refresh]")) { schedule(); return; }
      refresh().then(schedule, schedule);
    }, live === "active" ? 2000 : 10000);
  }

  function show(message, isError, link) {
    var slot = document.getElementById("action-result");
    if (!slot) { return; }
    slot.textContent = message;
    slot.classList.toggle("is-error", !!isError);
    slot.setAttribute("role", isError ? "alert" : "status");
    if (link) {
      slot.appendChild(document.createTextNode(" "));
      var a = document.createElement("a");
      a.href = link.href;
      a.textContent = link.text;
      a.id = "action-link";
      slot.appendChild(a);
    }
  }

  // POST to an API endpoint; the API's answer (or its error message) is shown as it is.
  function post(url, payload, control) {
    if (control) { control.disabled = true; }
    return fetch(url, { method: "POST", headers: apiHeaders(), body: JSON.stringify(payload || {}),
                        credentials: "omit", cache: "no-store" })
      .then(function (answer) {
        return answer.text().then(function (text) {
          var data = null;
          try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
          if (!answer.ok) {
            var message = (data && data.message) || ("HTTP " + answer.status);
            show("The API answered " + answer.status + ": " + message, true);
            return null;
          }
          return data;
        });
      }, function () { show("The API could not be reached.", true); return null; })
      .then(function (data) {
        if (control) { control.disabled = false; }
        return data;
      });
  }

  function runLink(data) {
    return { href: "/console/orgs/" + org + "/runs/" + data.executionId, text: "Open run " + data.executionId.slice(0, 8) };
  }

  function bindActions() {
    Array.prototype.forEach.call(document.querySelectorAll("button[data-api-post]"), function (button) {
      if (button.dataset.bound) { return; }
      button.dataset.bound = "1";
      button.addEventListener("click", function () {
        post(button.dataset.apiPost, {}, button).then(function (data) {
          if (!data) { return; }
          if (data.retryOf) {
            show("Retry queued (" + data.status + ").", false, runLink(data));
          } else {
            show("Accepted: the run is " + data.status + ".");
          }
          refresh().then(schedule);
        });
      });
    });
    var execute = document.getElementById("execute");
    if (execute && !execute.dataset.bound) {
      execute.dataset.bound = "1";
      execute.addEventListener("submit", function (event) {
        event.preventDefault();
        var variables;
        try { variables = JSON.parse(document.getElementById("variables").value || "{}"); } catch (e) {
          show("Variables: not valid JSON (" + e.message + ").", true);
          return;
        }
        post(execute.dataset.apiPost, { variables: variables }, execute.querySelector("button")).then(function (data) {
          if (data) { show("Run queued (" + data.status + ").", false, runLink(data)); }
        });
      });
    }
    bindRerun();
    Array.prototype.forEach.call(document.querySelectorAll("form.resolve"), function (form) {
      if (form.dataset.bound) { return; }
      form.dataset.bound = "1";
      form.addEventListener("submit", function (event) {
        event.preventDefault();
        var payload = {};
        var outcome = form.querySelector("[data-field=outcome]").value;
        payload.outcome = outcome;
        if (outcome === "succeeded") {
          try { payload.outputs = JSON.parse(form.querySelector("[data-field=outputs]").value || "null"); } catch (e) {
            show("Output: not valid JSON (" + e.message + ").", true);
            return;
          }
        }
        if (outcome === "failed") { payload.message = form.querySelector("[data-field=message]").value || null; }
        post(form.dataset.apiPost, payload, form.querySelector("button")).then(function (data) {
          if (!data) { return; }
          show("Resolved: the run is " + data.status + " again.");
          refresh().then(schedule);
        });
      });
    });
  }

  // "Re-run from here": the API's dry run first (what would be kept, run again and sent again),
  // then the real re-run only when confirmed. Everything the API answered is put in as text.
  function listInto(id, items) {
    var list = document.getElementById(id);
    list.textContent = "";
    (items.length ? items : ["(none)"]).forEach(function (item) {
      var li = document.createElement("li");
      var code = document.createElement("code");
      code.textContent = item;
      li.appendChild(code);
      list.appendChild(li);
    });
  }

  function showPreview(panel, step, data) {
    document.getElementById("rerun-step").textContent = step;
    listInto("rerun-keep", data.keep);
    listInto("rerun-again", data.runAgain);
    var rows = document.getElementById("rerun-calls");
    rows.textContent = "";
    if (!data.calls.length) {
      var none = document.createElement("tr");
      var cell = document.createElement("td");
      cell.colSpan = 5;
      cell.textContent = "No call would be sent again.";
      none.appendChild(cell);
      rows.appendChild(none);
    }
    data.calls.forEach(function (call) {
      var tr = document.createElement("tr");
      tr.className = "rerun-call";
      var flags = [];
      if (call.notIdempotent) { flags.push("not idempotent"); }
      if (call.dataDependent) { flags.push("data-dependent"); }
      [call.stepId, call.tool || "—", call.method || "—", call.url || "—", flags.join(", ") || "—"].forEach(function (text, i) {
        var td = document.createElement(i === 0 ? "th" : "td");
        if (i === 0) { td.scope = "row"; }
        if (i === 3) { var code = document.createElement("code"); code.textContent = text; td.appendChild(code); } else { td.textContent = text; }
        if (i === 4 && flags.length) { td.className = "flags"; }
        tr.appendChild(td);
      });
      rows.appendChild(tr);
    });
    panel.dataset.step = step;
    panel.hidden = false;
    panel.scrollIntoView({ block: "nearest" });
    document.getElementById("rerun-confirm").focus();
  }

  function bindRerun() {
    var panel = document.getElementById("rerun-preview");
    if (!panel) { return; }
    Array.prototype.forEach.call(document.querySelectorAll("button.rerun-from"), function (button) {
      if (button.dataset.bound) { return; }
      button.dataset.bound = "1";
      button.addEventListener("click", function () {
        post(panel.dataset.apiPost, { fromStep: button.dataset.step, dryRun: true }, button).then(function (data) {
          if (data) { showPreview(panel, button.dataset.step, data); }
        });
      });
    });
    var confirm = document.getElementById("rerun-confirm");
    if (confirm && !confirm.dataset.bound) {
      confirm.dataset.bound = "1";
      confirm.addEventListener("click", function () {
        post(panel.dataset.apiPost, { fromStep: panel.dataset.step }, confirm).then(function (data) {
          if (!data) { return; }
          panel.hidden = true;
          show("Re-run queued (" + data.status + ").", false, runLink(data));
        });
      });
    }
    var dismiss = document.getElementById("rerun-dismiss");
    if (dismiss && !dismiss.dataset.bound) {
      dismiss.dataset.bound = "1";
      dismiss.addEventListener("click", function () { panel.hidden = true; });
    }
  }


  function element(tag, text, className) {
    var el = document.createElement(tag);
    if (text !== undefined && text !== null) { el.textContent = text; }
    if (className) { el.className = className; }
    return el;
  }

  // What a step calls, in a few words (tolstoy_step_target's answer).
  function target(t) {
    if (!t) { return "nothing"; }
    var words = t.type || "?";
    if (t.action) { words += " " + (t.action.method || "") + " " + (t.action.endpoint || t.action.missing || ""); }
    if (t.call) { words += " " + (t.call.method || "") + " " + (t.call.url || ""); }
    if (t.flow) { words += " flow " + (t.flow.id || t.flow.key || ""); }
    if (t.item) { words += " of " + target(t.item); }
    return words;
  }

  // The dry run's diff as lists (text only: step ids are the flow author's), and a checkbox for each
  // checkpoint the move would discard, which the person must tick to move.
  function renderMove(form, diff) {
    var slot = form.querySelector("#move-diff");
    slot.textContent = "";
    slot.appendChild(element("h4", "Moving from v" + diff.fromVersion + " to v" + diff.toVersion +
                                   " (parked on " + diff.parked.join(", ") + ")"));
    function list(title, items, className, words) {
      if (!items.length) { return; }
      slot.appendChild(element("h4", title));
      var ul = element("ul", null, "move-" + className);
      items.forEach(function (item) { ul.appendChild(element("li", words(item), className)); });
      slot.appendChild(ul);
    }
    list("Steps added", diff.added, "added", function (id) { return id; });
    list("Steps removed", diff.removed, "removed", function (s) {
      return s.stepId + (s.status ? " (recorded: " + s.status + ")" : " (nothing recorded)");
    });
    list("Steps changed", diff.changed, "changed", function (s) { return s.stepId + ": " + s.fields.join(", "); });
    list("Kept as recorded", diff.kept, "kept", function (s) { return s.stepId + " (" + s.status + ")"; });
    list("Recorded output no longer fits", diff.outputNoLongerFits, "unfit", function (s) {
      return s.stepId + ": was " + target(s.was) + ", now " + target(s.now);
    });
    var discard = diff.mustDrop.concat(diff.dropped);
    if (discard.length) {
      slot.appendChild(element("h4", "To move, discard what these steps recorded (removed steps, and steps that run again)"));
      discard.forEach(function (id, index) {
        var row = element("div");
        var box = element("input");
        box.type = "checkbox";
        box.id = "move-drop-" + index;
        box.value = id;
        box.dataset.drop = "1";
        box.checked = diff.dropped.indexOf(id) >= 0;
        var label = element("label", " Discard " + id);
        label.htmlFor = box.id;
        row.appendChild(box);
        row.appendChild(label);
        slot.appendChild(row);
      });
    }
    if (!diff.added.length && !diff.removed.length && !diff.changed.length && !diff.outputNoLongerFits.length) {
      slot.appendChild(element("p", "No step changes: the run takes the version's plan as it is now."));
    }
    if (diff.wakes) { slot.appendChild(element("p", "Every parked step is discarded: the run goes on at once.")); }
  }

  function moveBody(form, dryRun) {
    var drops = Array.prototype.filter.call(form.querySelectorAll("input[data-drop]"), function (box) {
      return box.checked;
    }).map(function (box) { return box.value; });
    return { version: parseInt(form.querySelector("[data-field=version]").value, 10), dryRun: dryRun,
             dropSteps: drops };
  }

  function bindMove() {
    var form = document.getElementById("move-run");
    if (!form || form.dataset.bound) { return; }
    form.dataset.bound = "1";
    var confirm = form.querySelector("#move-confirm");
    form.querySelector("[data-field=version]").addEventListener("change", function () {
      form.querySelector("#move-diff").textContent = "";  // another version: preview again
      confirm.hidden = true;
      delete form.dataset.holdRefresh;
    });
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      post(form.dataset.apiPost, moveBody(form, true), form.querySelector("#move-preview")).then(function (data) {
        if (!data) { return; }
        form.dataset.holdRefresh = "1";
        renderMove(form, data.diff);
        confirm.hidden = false;
        show("Preview of the move to v" + data.diff.toVersion + ": nothing is changed until you confirm.");
      });
    });
    confirm.addEventListener("click", function () {
      post(form.dataset.apiPost, moveBody(form, false), confirm).then(function (data) {
        if (!data) { return; }
        delete form.dataset.holdRefresh;
        show("Moved to v" + data.flowVersion + ": the run is " + data.status + ".");
        refresh().then(schedule);
      });
    });
  }

  function bindUser() {
    var select = document.getElementById("acting-user");
    if (!select) { return; }
    var saved = sessionStorage.getItem(USER);
    if (saved && select.querySelector("option[value='" + saved.replace(/[^0-9a-f-]/gi, "") + "']")) {
      select.value = saved;
    } else if (!saved && select.options.length > 1) {
      select.selectedIndex = 1;
      sessionStorage.setItem(USER, select.value);
    }
    select.addEventListener("change", function () { sessionStorage.setItem(USER, select.value); });
    var out = document.getElementById("sign-out");
    if (out) { out.addEventListener("click", function () { signOut(""); }); }
  }

  function reveal() {
    Array.prototype.forEach.call(document.querySelectorAll(".js-only[hidden]"), function (el) { el.hidden = false; });
  }

  function bind() {
    reveal();
    bindActions();
    bindMove();
  }

  function signIn() {
    var form = document.getElementById("signin");
    if (!form) { return; }
    var error = document.getElementById("signin-error");
    if (/signedout=expired/.test(location.search)) {
      error.textContent = "Your API key was refused (expired, revoked or unknown); sign in again.";
    }
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var key = document.getElementById("api-key").value.trim();
      error.textContent = "";
      fetch("/organizations?limit=1", { headers: { "Authorization": "Bearer " + key, "Accept": "application/json" },
                                        credentials: "omit", cache: "no-store" })
        .then(function (answer) {
          return answer.json().then(function (data) { return { ok: answer.ok, status: answer.status, data: data }; });
        })
        .then(function (got) {
          if (!got.ok || !Array.isArray(got.data) || !got.data.length) {
            error.textContent = "Sign-in refused: " + ((got.data && got.data.message) || ("HTTP " + got.status));
            return;
          }
          sessionStorage.setItem(KEY, key);
          sessionStorage.removeItem(USER);
          location.assign("/console/orgs/" + got.data[0].id + "/flows");
        }, function () { error.textContent = "The server could not be reached."; });
    });
  }

  function start() {
    bindUser();
    bind();
    signIn();
    var main = document.getElementById("main");
    if (main && main.dataset.shell) {
      if (!apiKey()) { signOut(""); return; }
      refresh().then(function () {
        var fresh = document.getElementById("main");
        if (fresh) { fresh.focus({ preventScroll: true }); }
        schedule();
      });
      return;
    }
    schedule();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
}());
