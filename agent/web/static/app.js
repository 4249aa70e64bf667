// RankScope review workspace: open the hypothesis named in the URL's #fragment, expand/collapse
// all, and sortable, filterable tables (a header button sorts by its column, numbers as numbers;
// the search box above a table keeps the rows that contain its words). No framework.
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
  function cellKey(row, col) {
    var cell = row.cells[col];
    if (!cell) { return ""; }
    return cell.hasAttribute("data-sort") ? cell.getAttribute("data-sort") : cell.textContent.trim();
  }
  function sortBy(table, th) {
    var col = th.cellIndex;
    var body = table.tBodies[0];
    if (!body) { return; }
    var rows = Array.prototype.slice.call(body.rows);
    var descending = th.getAttribute("aria-sort") === "ascending";
    var keys = rows.map(function (r) { return cellKey(r, col); });
    var numeric = keys.every(function (k) { return k === "" || !isNaN(Number(k)); });
    var order = rows.map(function (r, i) { return i; });
    order.sort(function (i, j) {
      var a = keys[i], b = keys[j], c;
      if (a === "" || b === "") { c = (a === "") - (b === ""); return c || i - j; }
      c = numeric ? Number(a) - Number(b) : a.localeCompare(b, undefined, {numeric: true});
      return (descending ? -c : c) || i - j;
    });
    var fragment = document.createDocumentFragment();
    order.forEach(function (i) { fragment.appendChild(rows[i]); });
    body.appendChild(fragment);
    th.parentElement.querySelectorAll("th").forEach(function (other) {
      if (other !== th && other.hasAttribute("aria-sort")) { other.setAttribute("aria-sort", "none"); }
    });
    th.setAttribute("aria-sort", descending ? "descending" : "ascending");
  }
  function filterRows(input) {
    var tools = input.closest(".table-tools");
    var table = tools && tools.nextElementSibling;
    if (!table || !table.tBodies[0]) { return; }
    var words = input.value.toLowerCase().split(/\s+/).filter(Boolean);
    var rows = table.tBodies[0].rows, shown = 0;
    for (var i = 0; i < rows.length; i++) {
      var text = rows[i].textContent.toLowerCase();
      var keep = words.every(function (w) { return text.indexOf(w) >= 0; });
      rows[i].hidden = !keep;
      if (keep) { shown++; }
    }
    var count = tools.querySelector(".table-count");
    if (count) { count.textContent = shown + " of " + rows.length + " rows shown"; }
  }
  document.addEventListener("DOMContentLoaded", function () {
    openTarget();
    document.querySelectorAll("button[data-expand]").forEach(function (button) {
      button.addEventListener("click", function () {
        var open = button.getAttribute("data-expand") === "all";
        document.querySelectorAll("details.hypothesis").forEach(function (d) { d.open = open; });
      });
    });
    document.addEventListener("click", function (event) {
      var button = event.target.closest && event.target.closest("table.sortable th button.sort");
      if (button) { sortBy(button.closest("table"), button.closest("th")); }
    });
    document.addEventListener("input", function (event) {
      if (event.target.classList && event.target.classList.contains("table-filter")) {
        filterRows(event.target);
      }
    });
  });
  window.addEventListener("hashchange", openTarget);
})();
