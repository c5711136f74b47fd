// aqueue dashboard: live updates and confirmations, no dependencies.
// The server's /live stream says "something changed"; the page is fetched again and every
// element marked data-live (by id) is swapped for its new version. Forms with
// data-confirm ask first.
(function () {
  "use strict";
  var body = document.body;
  var status = document.getElementById("live-status");
  var pending = false, running = false;

  function refresh() {
    if (running) { pending = true; return; }
    running = true;
    fetch(window.location.href, { headers: { "X-Aqueue-Live": "1" }, credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (!html) return;
        var doc = new DOMParser().parseFromString(html, "text/html");
        document.querySelectorAll("[data-live][id]").forEach(function (old) {
          if (old.contains(document.activeElement) && document.activeElement.tagName !== "BODY") return;
          var fresh = doc.getElementById(old.id);
          if (fresh && fresh.innerHTML !== old.innerHTML) { old.innerHTML = fresh.innerHTML; }
        });
        body.dataset.liveUpdates = String(Number(body.dataset.liveUpdates || 0) + 1);
      })
      .catch(function () {})
      .then(function () {
        running = false;
        if (pending) { pending = false; setTimeout(refresh, 100); }
      });
  }

  if (window.EventSource && body.dataset.liveUrl && document.querySelector("[data-live]")) {
    var source = new EventSource(body.dataset.liveUrl);
    source.onopen = function () { if (status) status.className = "on"; body.dataset.live = "on"; };
    source.onerror = function () { if (status) status.className = "off"; };
    source.onmessage = function () { refresh(); };
  }

  document.addEventListener("submit", function (e) {
    var form = e.target;
    var question = form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) { e.preventDefault(); }
  });
})();
