// Test harness: records every event of the sessions a test starts, in order,
// in a form page.evaluate() can return to Python.
"use strict";

window.runs = [];

function describeData(data, record) {
  if (typeof data === "string") return {kind: "text", value: data};
  if (data instanceof ArrayBuffer) return {kind: "arraybuffer", bytes: Array.from(new Uint8Array(data))};
  if (data instanceof Blob) {
    const described = {kind: "blob", bytes: null};
    record.pendingBlobs++;
    data.arrayBuffer().then((buffer) => {
      described.bytes = Array.from(new Uint8Array(buffer));
      record.pendingBlobs--;
    });
    return described;
  }
  return {kind: "json", value: data};
}

// Start a session with the page's PollSession class; returns its index in runs.
window.startSession = function (url, options) {
  const Session = window.SessionClass || window.PollSession;
  const record = {events: [], pendingBlobs: 0, session: null};
  const session = new Session(url, options || {});
  record.session = session;
  session.onopen = () => record.events.push({type: "open", readyState: session.readyState});
  session.onmessage = (event) => record.events.push({
    type: "message",
    data: describeData(event.data, record),
    isMessageEvent: event instanceof MessageEvent,
  });
  session.addEventListener("error", () => record.events.push({type: "error", readyState: session.readyState}));
  session.addEventListener("close", (event) => record.events.push({
    type: "close",
    code: event.code,
    reason: event.reason,
    wasClean: event.wasClean,
    isCloseEvent: event instanceof CloseEvent,
    readyState: session.readyState,
  }));
  window.runs.push(record);
  return window.runs.length - 1;
};

window.session = (index) => window.runs[index].session;
window.events = (index) => window.runs[index].events;
window.messages = (index) => window.runs[index].events.filter((e) => e.type === "message").map((e) => e.data);
window.closeEvent = (index) => window.runs[index].events.find((e) => e.type === "close") || null;
window.countOf = (index, type) => window.runs[index].events.filter((e) => e.type === type).length;
