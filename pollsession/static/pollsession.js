/*
 * pollsession.js - the browser client of pollsession (wire protocol version 1).
 *
 * A PollSession gives a page a WebSocket-like session over HTTP long-polling:
 *
 *     const session = new PollSession("/poll", {credentials: "same-origin"});
 *     session.onopen = () => session.send("hello");
 *     session.onmessage = (event) => console.log(event.data);
 *     session.onclose = (event) => console.log(event.code, event.reason, event.wasClean);
 *
 * Loading. Plain JavaScript, no build step, no dependency. This file is a
 * classic script that defines `globalThis.PollSession` (so `window.PollSession`):
 *
 *     <script src="/pollsession.js"></script>
 *
 * A file that says `export` cannot load as a classic script, so module users
 * have two ways in:
 *
 *     import "/pollsession.js";                   // evaluates this file as a module
 *     const {PollSession} = globalThis;           // ... which defines the global too
 *
 *     import {PollSession} from "/pollsession.mjs";   // pollsession.mjs re-exports it;
 *                                                      // serve it beside this file
 *
 * Loading the file twice (a script tag and an import) keeps the first class, so
 * `instanceof` checks agree.
 *
 * API (mirrors WebSocket):
 *
 *   new PollSession(url, options)   url is resolved against the page; options:
 *       headers         extra request headers for every request ({} by default;
 *                       any non-simple header costs a CORS preflight)
 *       credentials     "omit" | "same-origin" (default) | "include", as for fetch
 *       pollTimeout     seconds a poll may be held, sent as `wait` (default: the
 *                       server's poll_timeout)
 *       maxRetries      retries after a network error or a 5xx before giving up
 *                       with close code 1006 (default 8; 0 gives up at once)
 *       retryBaseDelay  first retry delay in seconds, doubled each retry, with
 *                       jitter (default 0.25)
 *       retryMaxDelay   longest retry delay in seconds (default 10)
 *       binaryType      "arraybuffer" (default) or "blob"
 *   CONNECTING=0 OPEN=1 CLOSING=2 CLOSED=3, on the class and on instances
 *   readyState, url, sessionId (null until open), bufferedAmount, binaryType
 *   send(data)      string -> text; ArrayBuffer, typed array, DataView or Blob ->
 *                   binary; anything else -> json (JSON.stringify)
 *   close(code = 1000, reason = "")
 *   events open, message (MessageEvent: data is a string, an ArrayBuffer or Blob,
 *   or the decoded JSON value), error (Event), close (CloseEvent: code, reason,
 *   wasClean); onopen/onmessage/onerror/onclose or addEventListener.
 *
 * Where it differs from WebSocket, on purpose:
 *   - send() before the session is open queues the message (WebSocket throws);
 *     it is sent once the session opens, in order.
 *   - send() throws a RangeError for a message larger than the server's
 *     max_message_size, once that limit is known (after open); a message queued
 *     before open that turns out too large fails the session with code 1009.
 *   - The wire has no close code from the client: close(code, reason) tells the
 *     server "1000" (DELETE) and uses code and reason for the local close event.
 *   - close() first sends what is queued (as WebSocket does), then DELETEs the
 *     session, then fires close with wasClean true.
 *   - close() while CONNECTING waits for the session to open, deletes it, and
 *     fires close with the given code (no open event, no error).
 *   - bufferedAmount counts bytes sent with send() that the server has not yet
 *     acknowledged (not only bytes not yet handed to the network).
 *
 * Reliability. One long poll `GET url?ack=N` is always outstanding; messages
 * whose seq is already known are dropped, so a lost poll answer costs nothing.
 * Sends are batched into one POST at a time, within the server's
 * max_body_size and inbox_limit, and unacknowledged ones are sent again after a
 * failure (the server drops repeats by seq). Network errors and 5xx answers
 * are retried with exponential backoff and jitter up to maxRetries; after a
 * 429 the rest is sent again no sooner than its Retry-After (cross-origin,
 * only if the server exposes that header), backing off while it lasts. A 410 means the server no longer knows the
 * session: close code 1006, wasClean false, unless its body reports how the
 * session ended (the server remembers that for a while, for a client whose
 * answer carrying the close was lost): then that code and reason, wasClean true. When a poll answer says the server
 * closed the session, the remaining messages are delivered, one last poll
 * acknowledges them (so the server forgets the session at once), and close
 * fires with the server's code and reason, wasClean true. On pagehide a
 * best-effort DELETE (fetch with keepalive) ends the session on the server.
 *
 * Cross-origin: the server must allow the page's origin (allowed_origins); it
 * exposes the Pollsession-Id header. Set credentials: "include" to send cookies
 * cross-origin (the server must then allow credentials).
 */
(function (global) {
  "use strict";

  if (typeof global.PollSession === "function" && global.PollSession.PROTOCOL_VERSION === 1) {
    return; // already loaded (a script tag and an import on the same page)
  }

  const CONNECTING = 0;
  const OPEN = 1;
  const CLOSING = 2;
  const CLOSED = 3;

  const DEFAULTS = Object.freeze({
    headers: {},
    credentials: "same-origin",
    pollTimeout: null,
    maxRetries: 8,
    retryBaseDelay: 0.25,
    retryMaxDelay: 10,
    binaryType: "arraybuffer",
  });

  // Used until the open answer tells the server's real limits.
  const FALLBACK_LIMITS = Object.freeze({
    pollTimeout: 25,
    maxMessageSize: Infinity,
    maxBodySize: 4 << 20,
    inboxLimit: 64,
  });

  // A poll the server holds longer than its poll timeout plus this margin is
  // presumed lost (a silent proxy, a sleeping laptop) and asked again.
  const HOLD_MARGIN = 10;
  const REQUEST_TIMEOUT = 30; // seconds, for requests the server answers at once
  const EMPTY_BODY_BYTES = '{"messages":[]}'.length;

  class PollSession extends EventTarget {
    #url;
    #options;
    #state = CONNECTING;
    #binaryType;
    #handlers = {open: null, message: null, error: null, close: null};

    #sid = null;
    #limits = FALLBACK_LIMITS;

    // Server to client: the highest seq received contiguously.
    #recvAck = 0;

    // Client to server: messages in seq order, kept until acknowledged.
    #outbox = [];
    #nextSeq = 0;
    #sendAck = 0;
    #buffered = 0;
    #sendGone = false; // a POST got 410: stop sending, the poll tells why
    #pushing = false;
    #pushPromise = null;
    #flushQueued = false;

    #closeRequest = null; // {code, reason} once close() was called
    #serverClosing = false; // a poll answer said the server closed: its code wins
    #deleting = false;
    #pollAbort = null;
    #sleepers = new Set();
    #pageHideListener = null;

    constructor(url, options = {}) {
      super();
      const base = global.location ? global.location.href : undefined;
      let parsed;
      try {
        parsed = new URL(String(url), base);
      } catch (err) {
        throw new DOMException(`PollSession: invalid url ${JSON.stringify(String(url))}`, "SyntaxError");
      }
      if (parsed.protocol !== "http:" && parsed.protocol !== "https:") {
        throw new DOMException(`PollSession: url must be http: or https:, got ${parsed.protocol}`, "SyntaxError");
      }
      parsed.hash = "";
      this.#url = parsed;
      this.#options = checkOptions(options);
      this.#binaryType = this.#options.binaryType;
      for (const type of Object.keys(this.#handlers)) {
        // The on<type> handler runs first, then addEventListener listeners.
        this.addEventListener(type, (event) => {
          const handler = this.#handlers[type];
          if (typeof handler === "function") handler.call(this, event);
        });
      }
      this.#watchPageHide();
      this.#open();
    }

    get url() { return this.#url.href; }
    get readyState() { return this.#state; }
    get sessionId() { return this.#sid; }
    get bufferedAmount() { return this.#buffered; }
    get binaryType() { return this.#binaryType; }
    set binaryType(value) {
      if (value === "arraybuffer" || value === "blob") this.#binaryType = value; // else ignored, as WebSocket does
    }

    get onopen() { return this.#handlers.open; }
    set onopen(fn) { this.#handlers.open = typeof fn === "function" ? fn : null; }
    get onmessage() { return this.#handlers.message; }
    set onmessage(fn) { this.#handlers.message = typeof fn === "function" ? fn : null; }
    get onerror() { return this.#handlers.error; }
    set onerror(fn) { this.#handlers.error = typeof fn === "function" ? fn : null; }
    get onclose() { return this.#handlers.close; }
    set onclose(fn) { this.#handlers.close = typeof fn === "function" ? fn : null; }

    /**
     * Queue one message. Strings go as text, binary data (ArrayBuffer, typed
     * array, DataView, Blob) as binary, anything else as JSON. Data is copied at
     * once, so the caller may reuse its buffer. Ignored once closing or closed.
     */
    send(data) {
      if (this.#state === CLOSING || this.#state === CLOSED) return;
      const entry = encode(data);
      if (entry.size > this.#limits.maxMessageSize) {
        throw new RangeError(
          `PollSession.send: message of ${entry.size} bytes exceeds the server's ` +
          `max_message_size of ${this.#limits.maxMessageSize} bytes`);
      }
      entry.seq = ++this.#nextSeq;
      if (entry.pending) {
        entry.pending = entry.pending.then((wire) => {
          entry.pending = null;
          setWire(entry, wire);
          this.#scheduleFlush();
        }, (err) => {
          this.#fail(1006, `could not read a Blob to send: ${err}`);
        });
      } else {
        setWire(entry, entry.wire);
      }
      this.#outbox.push(entry);
      this.#buffered += entry.size;
      this.#scheduleFlush();
    }

    /**
     * Close the session: send what is queued, DELETE the session, then fire
     * close with `code` and `reason` (the server always sees 1000).
     */
    close(code, reason) {
      if (code !== undefined && !(Number.isInteger(code) && (code === 1000 || (code >= 3000 && code <= 4999)))) {
        throw new DOMException(`PollSession.close: code must be 1000 or 3000-4999, got ${code}`, "InvalidAccessError");
      }
      const text = reason === undefined ? "" : String(reason);
      if (utf8Length(text) > 123) {
        throw new DOMException("PollSession.close: reason must be at most 123 UTF-8 bytes", "SyntaxError");
      }
      if (this.#state === CLOSING || this.#state === CLOSED) return;
      const wasConnecting = this.#state === CONNECTING;
      this.#state = CLOSING;
      this.#closeRequest = {code: code === undefined ? 1000 : code, reason: text};
      if (!wasConnecting) this.#clientClose(); // else #open finishes the job
    }

    // ---- opening --------------------------------------------------------

    async #open() {
      let answer;
      for (let failures = 0; ; ) {
        let res = null;
        try {
          res = await this.#request("GET", {withSid: false, timeout: REQUEST_TIMEOUT});
        } catch (err) {
          res = null;
        }
        if (this.#state === CLOSED) return;
        if (res && res.status === 200) {
          answer = res.body;
          break;
        }
        if (res && res.status < 500) {
          return this.#fail(1006, `the server refused the session: ${describeError(res)}`, false);
        }
        if (this.#closeRequest) {
          return this.#finish(1006, "closed before the session opened", false);
        }
        if (++failures > this.#options.maxRetries) {
          const why = res ? describeError(res) : "network error";
          return this.#fail(1006, `could not open the session (${why}) after ${failures} attempts`, false);
        }
        await this.#sleep(Math.max(res ? retryAfter(res.headers, 0) : 0, this.#backoff(failures)));
      }

      const sid = answer && typeof answer.sid === "string" && answer.sid ? answer.sid : null;
      if (!sid || answer.version !== 1) {
        return this.#fail(1002, "the open answer is not a pollsession version 1 answer", false);
      }
      this.#sid = sid;
      this.#limits = readLimits(answer);

      if (this.#closeRequest) { // close() was called while connecting
        this.#deleting = true;
        const clean = await this.#deleteSession();
        return this.#finish(this.#closeRequest.code, this.#closeRequest.reason, clean);
      }
      const tooBig = this.#outbox.find((entry) => entry.size > this.#limits.maxMessageSize);
      if (tooBig) {
        return this.#fail(1009, `a queued message of ${tooBig.size} bytes exceeds the server's ` +
          `max_message_size of ${this.#limits.maxMessageSize} bytes`);
      }

      this.#state = OPEN;
      this.#emit(new Event("open"));
      this.#kickPush();
      if (this.#state === CLOSED) return;
      this.#deliver(answer.messages);
      if (answer.closed) return this.#serverClosed(answer.closed);
      this.#pollLoop();
    }

    // ---- pulling: the long poll -----------------------------------------

    async #pollLoop() {
      for (let failures = 0; this.#state !== CLOSED && !this.#deleting; ) {
        const abort = new AbortController();
        this.#pollAbort = abort;
        const wait = this.#options.pollTimeout;
        const query = {ack: this.#recvAck};
        if (wait !== null) query.wait = wait;
        const hold = Math.min(wait === null ? Infinity : wait, this.#limits.pollTimeout);
        let res = null;
        let error = "network error";
        try {
          res = await this.#request("GET", {query, signal: abort.signal, timeout: hold + HOLD_MARGIN});
        } catch (err) {
          res = null;
          if (err && err.name === "TimeoutError") error = "poll timed out";
        }
        if (this.#pollAbort === abort) this.#pollAbort = null;
        if (this.#state === CLOSED || abort.signal.aborted) return;

        if (res && res.status === 200 && isAnswer(res.body)) {
          failures = 0;
          this.#deliver(res.body.messages);
          if (this.#state === CLOSED) return;
          if (res.body.closed) {
            if (this.#deleting) return; // our own DELETE closed it; #clientClose finishes
            return this.#serverClosed(res.body.closed);
          }
          continue;
        }
        if (res && res.status === 200) {
          return this.#fail(1002, "a poll answer is not a pollsession answer (no messages list)");
        }
        if (res && res.status === 410) {
          const closed = res.body && res.body.closed;
          if (closed && Number.isInteger(closed.code)) {
            // The server closed and already forgot the session (the answer
            // carrying the close was lost); it still says how it ended.
            return this.#finish(closed.code, typeof closed.reason === "string" ? closed.reason : "", true);
          }
          return this.#fail(1006, `the session is gone: the server no longer knows it (${describeError(res)})`, false);
        }
        if (res && res.status < 500 && res.status !== 429) {
          return this.#fail(1006, `the server refused a poll: ${describeError(res)}`);
        }
        if (res) error = describeError(res);
        if (++failures > this.#options.maxRetries) {
          return this.#fail(1006, `polling failed (${error}) ${failures} times in a row`);
        }
        await this.#sleep(Math.max(res ? retryAfter(res.headers, 0) : 0, this.#backoff(failures)));
      }
    }

    // Hand new messages to the page in seq order; drop ones already seen.
    #deliver(messages) {
      if (!Array.isArray(messages)) return;
      for (const message of messages) {
        if (this.#state === CLOSED) return;
        if (!message || !Number.isInteger(message.seq) || message.seq <= this.#recvAck) continue;
        if (message.seq !== this.#recvAck + 1) return; // a gap: the next poll asks again
        let data;
        if (message.type === "text" && typeof message.data === "string") {
          data = message.data;
        } else if (message.type === "json") {
          data = message.data;
        } else if (message.type === "binary" && typeof message.data === "string") {
          let bytes;
          try {
            bytes = fromBase64(message.data);
          } catch (err) {
            return this.#fail(1002, `message ${message.seq} has invalid base64 data`);
          }
          data = this.#binaryType === "blob" ? new Blob([bytes]) : bytes.buffer;
        } else {
          return this.#fail(1002, `message ${message.seq} has an unknown type or bad data`);
        }
        this.#recvAck = message.seq;
        this.#emit(new MessageEvent("message", {data, origin: this.#url.origin}));
      }
    }

    // The server closed the session: acknowledge everything with one last poll
    // so the server forgets it now, then report the server's code and reason.
    async #serverClosed(closed) {
      if (this.#state === CLOSED) return;
      this.#state = CLOSING;
      this.#serverClosing = true;
      const code = Number.isInteger(closed.code) ? closed.code : 1005;
      const reason = typeof closed.reason === "string" ? closed.reason : "";
      for (let round = 0; round < 3 && this.#state !== CLOSED; round++) {
        const before = this.#recvAck;
        let res;
        try {
          res = await this.#request("GET", {query: {ack: this.#recvAck, wait: 0}, timeout: REQUEST_TIMEOUT});
        } catch (err) {
          break; // best effort: the server forgets the session when it expires anyway
        }
        if (res.status !== 200 || !isAnswer(res.body)) break;
        this.#deliver(res.body.messages);
        if (this.#recvAck === before) break; // the server has our last ack: done
      }
      this.#finish(code, reason, true);
    }

    // ---- pushing --------------------------------------------------------

    #scheduleFlush() {
      if (this.#flushQueued) return;
      this.#flushQueued = true;
      // A microtask, so that several send() calls in a row go in one POST.
      queueMicrotask(() => {
        this.#flushQueued = false;
        this.#kickPush();
      });
    }

    // Start the push loop unless it runs; resolve when it has nothing left to do.
    #kickPush() {
      if (!this.#pushing) {
        this.#pushing = true;
        this.#pushPromise = this.#pushLoop();
      }
      return this.#pushPromise;
    }

    async #pushLoop() {
      try {
        for (let failures = 0, busy = 0; ; ) {
          if (this.#sid === null || this.#sendGone || this.#state === CLOSED || this.#deleting) return;
          const batch = this.#nextBatch();
          if (batch === null) return; // nothing ready: the next send() starts the loop again
          if (batch.tooBig) {
            return this.#fail(1009, `a message of ${batch.tooBig.size} bytes does not fit the ` +
              `server's max_body_size of ${this.#limits.maxBodySize} bytes`);
          }
          let res = null;
          try {
            res = await this.#request("POST", {body: batch.body, timeout: REQUEST_TIMEOUT});
          } catch (err) {
            res = null;
          }
          if (this.#state === CLOSED) return;
          if (res && (res.status === 200 || res.status === 429) && res.body && Number.isInteger(res.body.ack)) {
            this.#acknowledge(res.body.ack);
          }
          if (res && res.status === 200) {
            if (!(res.body && Number.isInteger(res.body.ack))) {
              return this.#fail(1002, "a POST answer is not a pollsession answer (no ack)");
            }
            failures = 0;
            busy = 0;
            continue;
          }
          if (res && res.status === 429) {
            // The session does not read fast enough: wait at least Retry-After,
            // longer while it stays full. While closing, do not wait for it.
            if (this.#closeRequest) return;
            failures = 0;
            await this.#sleep(Math.max(retryAfter(res.headers, 0), this.#backoff(++busy)));
            continue;
          }
          if (res && res.status === 410) {
            // The session is closed or gone; the poll tells which and fires close.
            this.#sendGone = true;
            return;
          }
          if (res && res.status === 413) {
            return this.#fail(1009, `the server refused messages as too large: ${describeError(res)}`);
          }
          if (res && res.status < 500) {
            return this.#fail(1006, `the server refused messages: ${describeError(res)}`);
          }
          if (++failures > this.#options.maxRetries) {
            const why = res ? describeError(res) : "network error";
            return this.#fail(1006, `sending failed (${why}) ${failures} times in a row`);
          }
          await this.#sleep(this.#backoff(failures));
        }
      } finally {
        this.#pushing = false;
      }
    }

    // The longest run of ready, unacknowledged messages that fits one POST.
    #nextBatch() {
      const parts = [];
      let bytes = EMPTY_BODY_BYTES;
      for (const entry of this.#outbox) {
        if (entry.pending || parts.length >= this.#limits.inboxLimit) break;
        const extra = entry.entryBytes + (parts.length ? 1 : 0);
        if (bytes + extra > this.#limits.maxBodySize) {
          if (parts.length) break;
          return {tooBig: entry};
        }
        parts.push(entry.entryJson);
        bytes += extra;
      }
      return parts.length ? {body: '{"messages":[' + parts.join(",") + "]}"} : null;
    }

    #acknowledge(ack) {
      if (ack <= this.#sendAck) return;
      this.#sendAck = Math.min(ack, this.#nextSeq);
      let drop = 0;
      while (drop < this.#outbox.length && this.#outbox[drop].seq <= this.#sendAck) {
        this.#buffered -= this.#outbox[drop].size;
        drop++;
      }
      this.#outbox.splice(0, drop);
    }

    // ---- closing --------------------------------------------------------

    async #clientClose() {
      // Like WebSocket, data sent before close() goes out before the close.
      await Promise.allSettled(this.#outbox.map((entry) => entry.pending).filter(Boolean));
      if (this.#state === CLOSED || this.#serverClosing) return;
      await this.#kickPush();
      if (this.#state === CLOSED || this.#serverClosing) return;
      this.#deleting = true;
      if (this.#pollAbort) this.#pollAbort.abort();
      const clean = await this.#deleteSession();
      this.#finish(this.#closeRequest.code, this.#closeRequest.reason, clean);
    }

    // DELETE the session, retrying network errors; true once the server answered.
    async #deleteSession() {
      for (let failures = 0; ; ) {
        try {
          const res = await this.#request("DELETE", {timeout: REQUEST_TIMEOUT});
          if (res.status < 500) return res.status >= 200 && res.status < 300;
        } catch (err) {
          // retried below
        }
        if (this.#state === CLOSED || ++failures > this.#options.maxRetries) return false;
        await this.#sleep(this.#backoff(failures));
      }
    }

    // Fail the session: readyState CLOSED, then error, then close (as WebSocket does).
    #fail(code, reason, deleteSession = true) {
      if (this.#state === CLOSED) return;
      this.#teardown();
      if (deleteSession && this.#sid !== null) this.#deleteInBackground();
      this.#emit(new Event("error"));
      this.#emit(closeEvent(code, reason, false));
    }

    #finish(code, reason, wasClean) {
      if (this.#state === CLOSED) return;
      this.#teardown();
      this.#emit(closeEvent(code, reason, wasClean));
    }

    #teardown() {
      this.#state = CLOSED;
      if (this.#pollAbort) this.#pollAbort.abort();
      this.#pollAbort = null;
      for (const wake of this.#sleepers) wake();
      this.#sleepers.clear();
      if (this.#pageHideListener) {
        global.removeEventListener("pagehide", this.#pageHideListener);
        this.#pageHideListener = null;
      }
    }

    #watchPageHide() {
      if (typeof global.addEventListener !== "function") return;
      this.#pageHideListener = () => {
        if (this.#sid !== null && this.#state !== CLOSED) this.#deleteInBackground();
      };
      global.addEventListener("pagehide", this.#pageHideListener);
    }

    // A DELETE that outlives the page (keepalive) and that nobody waits for.
    #deleteInBackground() {
      try {
        fetch(this.#url.href, {
          method: "DELETE",
          headers: this.#headers(true, false),
          credentials: this.#options.credentials,
          keepalive: true,
        }).catch(() => {});
      } catch (err) {
        // best effort only
      }
    }

    // ---- plumbing -------------------------------------------------------

    #emit(event) {
      this.dispatchEvent(event); // a throwing listener is reported, not propagated
    }

    #headers(withSid, json) {
      const headers = new Headers(this.#options.headers);
      if (withSid) headers.set("Pollsession-Id", this.#sid);
      if (json) headers.set("Content-Type", "application/json");
      return headers;
    }

    // One HTTP request, answer body read and parsed within the timeout.
    // Resolves {status, headers, body}; rejects on a network error or timeout.
    async #request(method, {query = null, body = undefined, withSid = true, signal = null, timeout}) {
      const url = new URL(this.#url);
      if (query) for (const [key, value] of Object.entries(query)) url.searchParams.set(key, String(value));
      const abort = new AbortController();
      const timer = setTimeout(
        () => abort.abort(new DOMException("request timed out", "TimeoutError")), timeout * 1000);
      const forward = () => abort.abort(signal.reason);
      if (signal) signal.addEventListener("abort", forward);
      try {
        const res = await fetch(url.href, {
          method,
          headers: this.#headers(withSid, body !== undefined),
          body,
          credentials: this.#options.credentials,
          cache: "no-store",
          signal: abort.signal,
        });
        const text = await res.text();
        let parsed = null;
        try {
          parsed = text ? JSON.parse(text) : null;
        } catch (err) {
          parsed = null;
        }
        return {status: res.status, headers: res.headers, body: parsed};
      } catch (err) {
        throw abort.signal.aborted && abort.signal.reason ? abort.signal.reason : err;
      } finally {
        clearTimeout(timer);
        if (signal) signal.removeEventListener("abort", forward);
      }
    }

    #backoff(failures) {
      const {retryBaseDelay, retryMaxDelay} = this.#options;
      const delay = Math.min(retryMaxDelay, retryBaseDelay * 2 ** (failures - 1));
      return delay * (0.5 + Math.random() / 2);
    }

    // Wait `seconds`, or less if the session closes meanwhile.
    #sleep(seconds) {
      return new Promise((resolve) => {
        const wake = () => {
          clearTimeout(timer);
          this.#sleepers.delete(wake);
          resolve();
        };
        const timer = setTimeout(wake, seconds * 1000);
        this.#sleepers.add(wake);
      });
    }
  }

  for (const [name, value] of Object.entries({CONNECTING, OPEN, CLOSING, CLOSED})) {
    Object.defineProperty(PollSession, name, {value, enumerable: true});
    Object.defineProperty(PollSession.prototype, name, {value, enumerable: true});
  }
  Object.defineProperty(PollSession, "PROTOCOL_VERSION", {value: 1});

  // ---- helpers (no state) -------------------------------------------------

  function checkOptions(options) {
    const merged = Object.assign({}, DEFAULTS, options || {});
    if (!["omit", "same-origin", "include"].includes(merged.credentials)) {
      throw new TypeError(`PollSession: credentials must be "omit", "same-origin" or "include", got ${merged.credentials}`);
    }
    if (merged.binaryType !== "arraybuffer" && merged.binaryType !== "blob") {
      throw new TypeError(`PollSession: binaryType must be "arraybuffer" or "blob", got ${merged.binaryType}`);
    }
    if (merged.pollTimeout !== null && merged.pollTimeout !== undefined) {
      if (!(typeof merged.pollTimeout === "number" && merged.pollTimeout >= 0 && Number.isFinite(merged.pollTimeout))) {
        throw new TypeError(`PollSession: pollTimeout must be a number of seconds >= 0, got ${merged.pollTimeout}`);
      }
    } else {
      merged.pollTimeout = null;
    }
    if (!(Number.isInteger(merged.maxRetries) && merged.maxRetries >= 0)) {
      throw new TypeError(`PollSession: maxRetries must be an integer >= 0, got ${merged.maxRetries}`);
    }
    for (const name of ["retryBaseDelay", "retryMaxDelay"]) {
      if (!(typeof merged[name] === "number" && merged[name] >= 0 && Number.isFinite(merged[name]))) {
        throw new TypeError(`PollSession: ${name} must be a number of seconds >= 0, got ${merged[name]}`);
      }
    }
    merged.headers = Object.assign({}, merged.headers || {});
    return Object.freeze(merged);
  }

  function readLimits(answer) {
    const pick = (value, fallback) => (typeof value === "number" && value >= 0 ? value : fallback);
    return Object.freeze({
      pollTimeout: pick(answer.poll_timeout, FALLBACK_LIMITS.pollTimeout),
      maxMessageSize: pick(answer.max_message_size, FALLBACK_LIMITS.maxMessageSize),
      maxBodySize: pick(answer.max_body_size, FALLBACK_LIMITS.maxBodySize),
      inboxLimit: Math.max(1, pick(answer.inbox_limit, FALLBACK_LIMITS.inboxLimit)),
    });
  }

  function isAnswer(body) {
    return body !== null && typeof body === "object" && Array.isArray(body.messages);
  }

  // Turn send()'s argument into {type, size, wire | pending}: `wire` is the
  // JSON text of the message's data, `size` the protocol's message size.
  function encode(data) {
    if (typeof data === "string") {
      const text = wellFormed(data);
      return {type: "text", size: utf8Length(text), wire: JSON.stringify(text)};
    }
    if (data instanceof ArrayBuffer || isSharedArrayBuffer(data)) {
      const bytes = new Uint8Array(data.slice(0));
      return {type: "binary", size: bytes.length, wire: JSON.stringify(toBase64(bytes))};
    }
    if (ArrayBuffer.isView(data)) {
      const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength).slice();
      return {type: "binary", size: bytes.length, wire: JSON.stringify(toBase64(bytes))};
    }
    if (typeof Blob === "function" && data instanceof Blob) {
      const pending = data.arrayBuffer().then((buffer) => JSON.stringify(toBase64(new Uint8Array(buffer))));
      return {type: "binary", size: data.size, wire: null, pending};
    }
    const json = JSON.stringify(data);
    if (json === undefined) {
      throw new TypeError(`PollSession.send: cannot send ${typeof data} as JSON`);
    }
    const wire = wellFormedJson(json);
    return {type: "json", size: utf8Length(wire), wire};
  }

  function setWire(entry, wire) {
    entry.wire = wire;
    entry.entryJson = `{"seq":${entry.seq},"type":"${entry.type}","data":${wire}}`;
    entry.entryBytes = entry.type === "binary" ? entry.entryJson.length : utf8Length(entry.entryJson);
  }

  function isSharedArrayBuffer(value) {
    return typeof SharedArrayBuffer === "function" && value instanceof SharedArrayBuffer;
  }

  // The server refuses lone surrogates (they are not Unicode); WebSocket sends
  // them as U+FFFD, and so do we.
  function wellFormed(text) {
    if (typeof text.toWellFormed === "function") return text.toWellFormed();
    return text.replace(/[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g, "\ufffd");
  }

  // JSON.stringify writes a lone surrogate as a \udXXX escape (a paired one as
  // characters): replace those escapes, minding escaped backslashes.
  function wellFormedJson(json) {
    return json.replace(/(?<!\\)((?:\\\\)*)\\ud[89a-f][0-9a-f]{2}/gi, "$1\ufffd");
  }

  function utf8Length(text) {
    let bytes = 0;
    for (let i = 0; i < text.length; i++) {
      const unit = text.charCodeAt(i);
      if (unit < 0x80) bytes += 1;
      else if (unit < 0x800) bytes += 2;
      else if (unit >= 0xd800 && unit <= 0xdbff && i + 1 < text.length &&
               (text.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
        bytes += 4;
        i++;
      } else bytes += 3;
    }
    return bytes;
  }

  function toBase64(bytes) {
    if (typeof bytes.toBase64 === "function") return bytes.toBase64();
    let binary = "";
    for (let i = 0; i < bytes.length; i += 0x8000) {
      binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    }
    return btoa(binary);
  }

  function fromBase64(text) {
    if (typeof Uint8Array.fromBase64 === "function") return Uint8Array.fromBase64(text);
    const binary = atob(text);
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    return bytes;
  }

  // Seconds from a Retry-After header (delta or date). Cross-origin, the header
  // is visible only if the server exposes it; otherwise `fallback` applies.
  function retryAfter(headers, fallback) {
    const value = headers && headers.get("Retry-After");
    if (!value) return fallback;
    const seconds = Number(value);
    if (Number.isFinite(seconds) && seconds >= 0) return seconds;
    const date = Date.parse(value);
    return Number.isNaN(date) ? fallback : Math.max(0, (date - Date.now()) / 1000);
  }

  function describeError(res) {
    const body = res.body;
    const code = body && typeof body.error === "string" ? ` ${body.error}` : "";
    const message = body && typeof body.message === "string" ? `: ${body.message}` : "";
    return `${res.status}${code}${message}`;
  }

  function closeEvent(code, reason, wasClean) {
    if (typeof CloseEvent === "function") return new CloseEvent("close", {code, reason, wasClean});
    const event = new Event("close");
    Object.defineProperties(event, {
      code: {value: code, enumerable: true},
      reason: {value: reason, enumerable: true},
      wasClean: {value: wasClean, enumerable: true},
    });
    return event;
  }

  global.PollSession = PollSession;
})(typeof globalThis !== "undefined" ? globalThis : self);
