// Local times and live refresh. Every page works without this script (times then read in UTC).
"use strict";
(function () {
  function localTimes(root) {
    root.querySelectorAll("time[datetime]").forEach(function (el) {
      var when = new Date(el.getAttribute("datetime"));
      if (isNaN(when)) return;
      el.title = el.textContent; // the UTC text stays one hover away
      el.textContent = when.toLocaleString(undefined, { year: "numeric", month: "2-digit", day: "2-digit",
        hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short" });
    });
  }

  function live() {
    var region = document.getElementById("live-region");
    var toggle = document.getElementById("live-toggle");
    var status = document.getElementById("live-status");
    if (!region || !region.dataset.live || !toggle) return;
    var busy = false;
    setInterval(async function () {
      if (!toggle.checked || busy) return;
      busy = true;
      try {
        var answer = await fetch(region.dataset.live, { headers: { Accept: "application/json" } });
        if (!answer.ok) throw new Error("status " + answer.status);
        var body = await answer.json();
        if (body.version === region.dataset.version) { status.textContent = ""; return; }
        // The server renders the new content (escaped as always); swap the region in place.
        var page = await fetch(location.href);
        var doc = new DOMParser().parseFromString(await page.text(), "text/html");
        var fresh = doc.getElementById("live-region");
        if (!fresh) return;
        region.innerHTML = fresh.innerHTML;
        region.dataset.version = fresh.dataset.version || body.version;
        localTimes(region);
        status.textContent = "Updated " + new Date().toLocaleTimeString();
      } catch (e) {
        status.textContent = "Live refresh paused: " + e.message;
      } finally {
        busy = false;
      }
    }, 2000);
  }

  document.addEventListener("DOMContentLoaded", function () { localTimes(document); live(); });
})();
