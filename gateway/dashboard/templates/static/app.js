// Small enhancements; every page works without them.
(function () {
  "use strict";

  // Copy buttons: <button data-copy="#input-id">; the status goes to the nearest .copy-status.
  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy]");
    if (!button) return;
    var input = document.querySelector(button.getAttribute("data-copy"));
    var status = document.querySelector(".copy-status");
    if (!input) return;
    function report(ok) {
      if (status) status.textContent = ok ? "Copied to the clipboard." : "Select the key and press Ctrl+C (⌘C) to copy it.";
      if (ok) button.textContent = "Copied";
    }
    function fallback() {
      input.focus();
      input.select();
      var ok = false;
      try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
      report(ok);
    }
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(input.value).then(function () { report(true); }, fallback);
    } else {
      fallback();
    }
  });

  // Destructive forms ask first: <form data-confirm="...">.
  document.addEventListener("submit", function (event) {
    var message = event.target.getAttribute("data-confirm");
    if (message && !window.confirm(message)) event.preventDefault();
  });

  // Integration search: <input data-filter="#list"> hides the list items whose data-name does not match.
  document.querySelectorAll("[data-filter]").forEach(function (input) {
    var list = document.querySelector(input.getAttribute("data-filter"));
    var empty = document.getElementById(list.id + "-empty");
    input.addEventListener("input", function () {
      var query = input.value.trim().toLowerCase();
      var shown = 0;
      list.querySelectorAll("[data-name]").forEach(function (item) {
        var match = !query || item.getAttribute("data-name").indexOf(query) !== -1;
        item.hidden = !match;
        if (match) shown += 1;
      });
      if (empty) empty.hidden = shown !== 0;
    });
  });

  // Key forms: the checklist only matters when "only the ones ticked" is chosen.
  document.querySelectorAll("[data-access]").forEach(function (fieldset) {
    var checklist = fieldset.querySelector(".checklist");
    function sync() {
      var some = fieldset.querySelector('input[name="access"][value="some"]').checked;
      checklist.classList.toggle("disabled", !some);
    }
    fieldset.addEventListener("change", function (event) {
      if (event.target.name === "integrations" && event.target.checked) {
        fieldset.querySelector('input[name="access"][value="some"]').checked = true;
      }
      sync();
    });
    sync();
  });
})();
