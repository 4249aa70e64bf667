// RankScope review workspace: open the hypothesis named in the URL's #fragment, expand/collapse all.
(function () {
  "use strict";
  function openTarget() {
    var id = decodeURIComponent(location.hash.slice(1));
    if (!id) { return; }
    var el = document.getElementById(id);
    while (el) {
      if (el.tagName === "DETAILS") { el.open = true; }
      el = el.parentElement;
    }
  }
  document.addEventListener("DOMContentLoaded", function () {
    openTarget();
    document.querySelectorAll("button[data-expand]").forEach(function (button) {
      button.addEventListener("click", function () {
        var open = button.getAttribute("data-expand") === "all";
        document.querySelectorAll("details.hypothesis").forEach(function (d) { d.open = open; });
      });
    });
  });
  window.addEventListener("hashchange", openTarget);
})();
