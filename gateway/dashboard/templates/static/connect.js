// Gateway.connect(token, options) opens the gateway's hosted connect page in a popup for one end
// user and resolves with {connection_id, integration} once they have connected an account.
// No dependencies. Serve this file from the gateway (/static/connect.js) or copy it.
//
//   <script src="https://gateway.example.com/static/connect.js"></script>
//   const { connection_id, integration } = await Gateway.connect(tokenFromYourServer);
//
// The page posts to this window only when its origin is in the session's `allowed_origins`.
(function (root) {
  "use strict";
  var script = document.currentScript;
  var defaultBase = script && script.src ? new URL(script.src).origin : "";

  function connect(token, options) {
    options = options || {};
    var base = (options.baseUrl || defaultBase).replace(/\/+$/, "");
    return new Promise(function (resolve, reject) {
      if (typeof token !== "string" || token.indexOf("cs_") !== 0) {
        reject(new Error("Gateway.connect needs a connect session token (cs_...)."));
        return;
      }
      var url = base + "/connect?popup=1&token=" + encodeURIComponent(token);
      var width = 520, height = 720;
      var left = Math.max(0, (window.screenX || 0) + ((window.outerWidth || width) - width) / 2);
      var top = Math.max(0, (window.screenY || 0) + ((window.outerHeight || height) - height) / 2);
      var popup = window.open(url, "gateway-connect", "popup=yes,width=" + width + ",height=" + height + ",left=" + left + ",top=" + top);
      if (!popup) {
        reject(new Error("The browser blocked the connect window: call Gateway.connect from a click."));
        return;
      }
      var settled = false;
      function finish(error, value) {
        if (settled) return;
        settled = true;
        window.removeEventListener("message", onMessage);
        clearInterval(watch);
        if (error) reject(error); else resolve(value);
      }
      function onMessage(event) {
        if (event.origin !== base || event.source !== popup) return;
        var data = event.data || {};
        if (data.type !== "gateway.connect") return;
        // Tells the popup its message arrived, so that it closes itself.
        try { popup.postMessage({ type: "gateway.connect.ack" }, base); } catch (e) { /* it closed already */ }
        if (data.status === "connected") finish(null, { connection_id: data.connection_id, integration: data.integration });
        else finish(new Error(data.error || "The account was not connected."));
      }
      window.addEventListener("message", onMessage);
      var watch = setInterval(function () {
        if (popup.closed) finish(new Error("The connect window was closed before an account was connected."));
      }, 500);
    });
  }

  root.Gateway = root.Gateway || {};
  root.Gateway.connect = connect;
})(window);
