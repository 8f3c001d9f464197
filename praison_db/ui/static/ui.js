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

  // What the reader unfolded stays unfolded across a refresh: each <details> is named by its nearest id and position.
  function detailsKey(el) {
    var owner = el.parentElement.closest("[id]");
    var siblings = owner.querySelectorAll("details");
    return owner.id + "/" + Array.prototype.indexOf.call(siblings, el);
  }
  function openDetails(root) {
    return Array.prototype.map.call(root.querySelectorAll("details[open]"), detailsKey);
  }
  function reopen(root, keys) {
    root.querySelectorAll("details").forEach(function (el) { if (keys.indexOf(detailsKey(el)) >= 0) el.open = true; });
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
        var open = openDetails(region);
        region.innerHTML = fresh.innerHTML;
        reopen(region, open);
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
