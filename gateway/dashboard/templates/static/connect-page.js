// The hosted connect page, once an account is connected: opened as a popup by /static/connect.js,
// it tells its opener (only on an origin the connect session allows) and closes once the opener
// acknowledges. A popup cannot read a cross-origin opener's address, so without that answer it
// cannot know the message arrived: it then stays, saying the window may be closed.
(function () {
  "use strict";
  var node = document.getElementById("connect-result");
  if (!node || !window.opener) return;
  var origins = (node.getAttribute("data-origins") || "").split(" ").filter(Boolean);
  if (!origins.length) return;
  var result;
  try { result = JSON.parse(node.getAttribute("data-result")); } catch (e) { return; }
  window.addEventListener("message", function (event) {
    var data = event.data || {};
    if (event.source === window.opener && origins.indexOf(event.origin) !== -1 && data.type === "gateway.connect.ack") {
      window.close();
    }
  });
  var message = { type: "gateway.connect", status: result.status, connection_id: result.connection_id, integration: result.integration };
  origins.forEach(function (origin) {
    // postMessage delivers only when the opener is on `origin`: the others are dropped by the browser.
    try { window.opener.postMessage(message, origin); } catch (e) { /* a malformed origin: skip it */ }
  });
})();
