/* Passkey ceremonies for the second-factor pages: fetch the server's options (JSON with
   base64url strings), call navigator.credentials, send the result back as JSON.
   A button with data-passkey="register" or "authenticate" and data-begin/data-finish URLs
   starts one; the form around it gives the CSRF token (and a "name" field, for register). */
(function () {
  "use strict";
  function toBytes(text) {
    var b64 = text.replace(/-/g, "+").replace(/_/g, "/");
    while (b64.length % 4) { b64 += "="; }
    var raw = atob(b64), bytes = new Uint8Array(raw.length);
    for (var i = 0; i < raw.length; i++) { bytes[i] = raw.charCodeAt(i); }
    return bytes.buffer;
  }
  function toText(buffer) {
    var bytes = new Uint8Array(buffer), raw = "";
    for (var i = 0; i < bytes.length; i++) { raw += String.fromCharCode(bytes[i]); }
    return btoa(raw).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }
  function descriptors(list) {
    return (list || []).map(function (d) { return Object.assign({}, d, { id: toBytes(d.id) }); });
  }
  function encode(credential) {
    var r = credential.response, response = { clientDataJSON: toText(r.clientDataJSON) };
    if (r.attestationObject) {
      response.attestationObject = toText(r.attestationObject);
      response.transports = r.getTransports ? r.getTransports() : [];
    } else {
      response.authenticatorData = toText(r.authenticatorData);
      response.signature = toText(r.signature);
      response.userHandle = r.userHandle ? toText(r.userHandle) : null;
    }
    return {
      id: credential.id, rawId: toText(credential.rawId), type: credential.type,
      response: response, clientExtensionResults: credential.getClientExtensionResults(),
      authenticatorAttachment: credential.authenticatorAttachment || null
    };
  }
  function post(url, token, body) {
    return fetch(url, {
      method: "POST", credentials: "same-origin",
      headers: { "X-CSRFToken": token, "Content-Type": "application/json" },
      body: body ? JSON.stringify(body) : "{}"
    });
  }
  function start(button) {
    var form = button.form, status = document.getElementById(button.dataset.status);
    var token = form.querySelector("input[name=csrfmiddlewaretoken]").value;
    var register = button.dataset.passkey === "register";
    function say(text) { if (status) { status.textContent = text; } }
    say("");
    post(button.dataset.begin, token).then(function (res) {
      if (res.redirected) { window.location = res.url; throw null; }
      if (!res.ok) { throw new Error("The server refused to start (" + res.status + ")."); }
      return res.json();
    }).then(function (options) {
      options.challenge = toBytes(options.challenge);
      if (register) {
        options.user.id = toBytes(options.user.id);
        options.excludeCredentials = descriptors(options.excludeCredentials);
        return navigator.credentials.create({ publicKey: options });
      }
      options.allowCredentials = descriptors(options.allowCredentials);
      return navigator.credentials.get({ publicKey: options });
    }).then(function (credential) {
      var name = form.querySelector("input[name=name]");
      return post(button.dataset.finish, token, {
        credential: encode(credential), name: name ? name.value : ""
      });
    }).then(function (res) {
      return res.json().then(function (data) {
        if (!res.ok) { throw new Error(data.error || "The passkey was not accepted."); }
        window.location = data.redirect;
      });
    }).catch(function (error) {
      if (error) { say(error.message || String(error)); }
    });
  }
  document.querySelectorAll("button[data-passkey]").forEach(function (button) {
    if (!window.PublicKeyCredential) { return; }
    button.hidden = false;
    button.addEventListener("click", function (event) { event.preventDefault(); start(button); });
  });
})();
