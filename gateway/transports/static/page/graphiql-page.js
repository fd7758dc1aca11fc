// numbers-gateway: mounts the vendored GraphiQL on this page (see gateway/transports/graphiql.py).
//
// Everything that varies (the GraphQL URL, the example tabs, the headers editor's default, the
// headers sent with every operation, the key of the tab storage) comes from the JSON block
// #graphiql-config the server renders; this file is constant, so it is served as a static
// asset with subresource integrity and the page needs no inline script at all.
(function () {
  "use strict";
  var root = document.getElementById("graphiql");
  var config = JSON.parse(document.getElementById("graphiql-config").textContent);
  if (!window.React || !window.ReactDOM || !window.GraphiQL) {
    root.textContent = "GraphiQL could not start: its scripts did not load from " +
      config.assetBase;
    return;
  }

  // Operations that stream (@defer, @stream, subscriptions) go as GraphQL over SSE and come
  // back as an async iterable, whose payloads GraphiQL shows (and merges) as they arrive.
  var STREAMING = /@(defer|stream)\b|\bsubscription\b/;

  function readEvents(response) {
    var reader = response.body.getReader();
    var decoder = new TextDecoder();
    var buffered = "";
    var queue = [];
    var finished = false;
    function pull() {
      if (queue.length) { return Promise.resolve({value: queue.shift(), done: false}); }
      if (finished) { return Promise.resolve({value: undefined, done: true}); }
      return reader.read().then(function (chunk) {
        if (chunk.done) { finished = true; return pull(); }
        buffered += decoder.decode(chunk.value, {stream: true});
        var blocks = buffered.split("\n\n");
        buffered = blocks.pop();
        blocks.forEach(function (block) {
          var event = null;
          var data = "";
          block.split("\n").forEach(function (line) {
            if (line.indexOf("event: ") === 0) { event = line.slice(7); }
            else if (line.indexOf("data: ") === 0) { data += line.slice(6); }
          });
          if (event === "next") { queue.push(JSON.parse(data)); }
          else if (event === "complete") { finished = true; }
        });
        return pull();
      });
    }
    var iterator = {
      next: pull,
      return: function () {
        finished = true;
        reader.cancel();
        return Promise.resolve({value: undefined, done: true});
      }
    };
    iterator[Symbol.asyncIterator] = function () { return iterator; };
    return iterator;
  }

  function fetcher(params, options) {
    var streaming = STREAMING.test(params.query || "");
    var headers = {
      "Content-Type": "application/json",
      "Accept": streaming ? "text/event-stream, application/json" : "application/json"
    };
    // The headers editor's, then the page's own (config.requestHeaders) unless the editor
    // names the same header, in any case.
    var extra = (options && options.headers) || {};
    var named = {};
    Object.keys(extra).forEach(function (name) {
      headers[name] = String(extra[name]);
      named[name.toLowerCase()] = true;
    });
    var always = config.requestHeaders || {};
    Object.keys(always).forEach(function (name) {
      if (!named[name.toLowerCase()]) { headers[name] = String(always[name]); }
    });
    return fetch(config.url, {
      method: "POST",
      headers: headers,
      body: JSON.stringify(params),
      credentials: "same-origin"
    }).then(function (response) {
      var type = response.headers.get("Content-Type") || "";
      if (type.indexOf("text/event-stream") === 0) { return readEvents(response); }
      return response.text().then(function (text) {
        try {
          return JSON.parse(text);
        } catch (error) {
          return {errors: [{message: "HTTP " + response.status + " with a body that is not JSON: " +
            text.slice(0, 500)}]};
        }
      });
    });
  }

  // Tab state is kept in localStorage under a key that changes with the examples and headers,
  // so a changed example set opens fresh tabs instead of what an older page (or strawberry's
  // GraphiQL on this origin) left behind; headers (tokens) are never stored.
  var prefix = "numbers-gateway:" + config.storageKey + ":";
  var memory = {};
  var local = null;
  try {
    local = window.localStorage;
    local.getItem(prefix);
  } catch (error) {
    local = null;
  }
  function ownKeys() {
    if (!local) { return Object.keys(memory); }
    var keys = [];
    for (var i = 0; i < local.length; i += 1) {
      var key = local.key(i);
      if (key !== null && key.indexOf(prefix) === 0) { keys.push(key.slice(prefix.length)); }
    }
    return keys;
  }
  var storage = {
    getItem: function (key) {
      if (local) { return local.getItem(prefix + key); }
      return Object.prototype.hasOwnProperty.call(memory, key) ? memory[key] : null;
    },
    setItem: function (key, value) {
      if (local) { local.setItem(prefix + key, value); } else { memory[key] = String(value); }
    },
    removeItem: function (key) {
      if (local) { local.removeItem(prefix + key); } else { delete memory[key]; }
    },
    clear: function () { ownKeys().forEach(function (key) { storage.removeItem(key); }); },
    key: function (index) { return ownKeys()[index] || null; },
    get length() { return ownKeys().length; }
  };

  ReactDOM.createRoot(root).render(React.createElement(GraphiQL, {
    fetcher: fetcher,
    defaultTabs: config.tabs,
    defaultHeaders: config.headers,
    isHeadersEditorEnabled: true,
    defaultEditorToolsVisibility: "headers",
    shouldPersistHeaders: false,
    storage: storage
  }));
})();
