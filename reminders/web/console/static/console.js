// Live preview of the template editor: sends the form to the preview endpoint as you type.
(function () {
  "use strict";
  var form = document.getElementById("template-form");
  if (!form) { return; }
  var out = document.getElementById("preview");
  var patient = document.getElementById("preview-patient");
  var timer = null;
  var sequence = 0;

  function byId(id) { return document.getElementById(id); }
  function setText(id, value) { var el = byId(id); if (el) { el.textContent = value || ""; } }

  function showError(message) {
    var el = byId("preview-error");
    el.textContent = message;
    el.hidden = false;
  }

  function show(data) {
    setText("preview-for", data["for"]);
    byId("preview-error").hidden = true;
    if (!data.ok) {
      var e = data.error || {};
      var where = e.field ? e.field + (e.line ? ", " + out.dataset.line + " " + e.line : "") + ": " : "";
      showError(where + (e.reason || out.dataset.failed));
      return;
    }
    setText("preview-text", data.text);
    setText("preview-subject", data.subject);
    var frame = byId("preview-html");
    if (frame) { frame.srcdoc = data.html || ""; }
    if (data.sms) {
      var s = data.sms;
      setText("preview-sms", s.characters + " " + out.dataset.chars + " · " + s.encoding + " · " +
        s.segments + " " + out.dataset.segments);
      byId("preview-ucs2").hidden = s.encoding !== "UCS-2";
      setText("preview-ucs2-chars", s.forcing_ucs2.join(" "));
    }
    if (data.variables) {
      setText("preview-sid", data.content_sid);
      var list = byId("preview-variables");
      list.textContent = "";
      Object.keys(data.variables).forEach(function (key) {
        var dt = document.createElement("dt");
        dt.textContent = "{{" + key + "}}";
        var dd = document.createElement("dd");
        dd.textContent = data.variables[key];
        list.appendChild(dt);
        list.appendChild(dd);
      });
    }
  }

  function update() {
    var body = new FormData(form);
    body.set("patient", patient.value);
    var mine = ++sequence;
    out.setAttribute("aria-busy", "true");
    fetch(form.dataset.previewUrl, {
      method: "POST", body: body, credentials: "same-origin",
      headers: { "Accept": "application/json" }
    }).then(function (response) {
      return response.json();
    }).then(function (data) {
      if (mine === sequence) { show(data); }
    }).catch(function () {
      if (mine === sequence) { showError(out.dataset.failed); }
    }).finally(function () {
      if (mine === sequence) { out.removeAttribute("aria-busy"); }
    });
  }

  function soon() { clearTimeout(timer); timer = setTimeout(update, 250); }
  form.addEventListener("input", soon);
  patient.addEventListener("input", soon);
  update();
}());
