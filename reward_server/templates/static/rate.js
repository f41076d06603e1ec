// Keyboard shortcuts for the rating page: 1-9 and 0 (= 10) score, a/b choose, s skips.
// Each key clicks the button that carries it, so the form posts exactly as a tap would.
(function () {
  "use strict";
  var form = document.getElementById("rate-form");
  if (!form) return;
  var sent = false;
  form.addEventListener("submit", function () {
    sent = true; // one answer per task, however fast the keys come
    window.setTimeout(function () {
      form.querySelectorAll("button").forEach(function (b) { b.disabled = true; });
    }, 0);
  });
  document.addEventListener("keydown", function (event) {
    if (sent || event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
    var target = event.target;
    if (target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA")) return;
    var key = event.key.toLowerCase();
    var button = form.querySelector('button[data-key="' + key + '"]');
    if (!button) return;
    event.preventDefault();
    button.click();
  });
})();
