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
 *       maxRetries      retries after a failed request (network error, 5xx,
 *                       malformed answer) before giving up with close code 1006
 *                       (default 8; 0 gives up at once)
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
 *   PollSession.protocol   the pure rules the client decides by (classify,
 *                   encode, Inbound, backoffDelay, parseRetryAfter, DEFAULTS),
 *                   frozen; for tests and tools (tests/vectors/README.md).
 *
 * Where it differs from WebSocket, on purpose:
 *   - send() before the session is open queues the message (WebSocket throws);
 *     it is sent once the session opens, in order.
 *   - send() throws a TypeError for what the protocol cannot carry: a string
 *     with a lone surrogate (WebSocket sends U+FFFD instead), or a JSON value
 *     with one in any key or string, NaN or Infinity; nothing is queued.
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
 * State. One field, the phase, says where a session is (readyState is derived
 * from it); every other field is data. The phases and what moves them:
 *
 *   connecting     (readyState 0) the open request is being made (and retried)
 *                  -> open: the open answer came
 *                  -> closing: close() was called (the open answer, when it
 *                     comes, goes straight to deleting; a failed attempt ends it)
 *   open           (1) one poll outstanding, the push loop sends what is queued
 *                  -> closing: close(); -> acknowledging: the server closed
 *   closing        (2) close() was called: what is queued still goes out, polls go on
 *                  -> deleting: all sent; -> acknowledging: the server closed first
 *   deleting       (2) the DELETE is being made; then closed, with close()'s code
 *   acknowledging  (2) the server closed: a last poll delivers and acknowledges
 *                  the rest; then closed, with the server's code and reason
 *   closed         (3) from any phase, also on a failure (error, then close)
 *
 * Reliability. Every request (open, poll, push, delete) goes through one retry
 * loop: each answer is classified by PollSession.protocol.classify into ok,
 * retry (network error, timeout, 5xx, malformed answer, which includes a 429
 * without an ack), throttled (429 inbox full) or close. A retry waits the backoff delay (or the answer's Retry-After, if
 * longer), and after maxRetries failed retries in a row the session closes
 * with 1006; a throttled push waits max(Retry-After, the backoff of the 429s
 * in a row) and sends the rest again, without a limit. One long poll
 * `GET url?ack=N` is always outstanding; messages whose seq is already known
 * are dropped, so a lost poll answer costs nothing. Sends are batched into one
 * POST at a time, within the server's max_body_size and inbox_limit, and
 * unacknowledged ones are sent again after a failure (the server drops repeats
 * by seq). Cross-origin, Retry-After is visible only if the server exposes it.
 * A 413 closes with 1009 (reason: the server's message); any other 4xx but
 * 410 and 429 with 1006. A 410 means the server no longer knows the session:
 * close code 1006, wasClean false, unless its body reports how the session
 * ended (the server remembers that for a while, for a client whose answer
 * carrying the close was lost): then that code and reason, wasClean true. An
 * open answer of another protocol version closes with 1002. When a poll answer
 * (or a refused POST) says the server closed the session, the remaining
 * messages are delivered, one last poll acknowledges them (so the server
 * forgets the session at once), and close fires with the server's code and
 * reason, wasClean true. On pagehide a best-effort DELETE (fetch with
 * keepalive) ends the session on the server.
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

  const READY_STATES = Object.freeze({
    connecting: CONNECTING,
    open: OPEN,
    closing: CLOSING,
    deleting: CLOSING,
    acknowledging: CLOSING,
    closed: CLOSED,
  });

  const DEFAULTS = Object.freeze({
    headers: {},
    credentials: "same-origin",
    pollTimeout: null,
    maxRetries: 8,
    retryBaseDelay: 0.25,
    retryMaxDelay: 10,
    binaryType: "arraybuffer",
  });

  // What an open answer means when it leaves a field out.
  const CONFIG_DEFAULTS = Object.freeze({
    poll_timeout: 25,
    session_timeout: 60,
    inbox_limit: 64,
    max_message_size: 1 << 20,
    max_body_size: 4 << 20,
  });

  // A poll the server holds longer than its poll timeout plus this margin is
  // presumed lost (a silent proxy, a sleeping laptop) and asked again.
  const HOLD_MARGIN = 10;
  const REQUEST_TIMEOUT = 10; // seconds, for requests the server answers at once (docs/protocol.md section 13)
  const EMPTY_BODY_BYTES = '{"messages":[]}'.length;
  const FINAL_POLLS = 3; // at most, after the server closed: enough to acknowledge the rest

  // ======================================================================
  // The protocol rules, pure: no I/O, no timers, no randomness of their own
  // (classify reads the clock only when it is not given `now`). The session
  // below decides through these and nothing else.
  // ======================================================================

  // Thrown inside classify: an answer that does not follow the protocol (so it
  // is retried), an open answer of another version (so the session closes),
  // a value that is not what JSON on the wire may hold.
  class Malformed extends Error {}
  class UnsupportedVersion extends Error {}
  class WireError extends RangeError {}

  /**
   * What a client does with one HTTP answer (tests/vectors/README.md, "answer").
   *
   * request: "open" | "poll" | "push" | "delete"; status: the HTTP status;
   * headers: a plain object (names in any case) or a Headers; bodyText: the
   * body's text or null; sent: the highest seq sent (push); now: epoch seconds
   * (for a Retry-After date). Returns one of
   *   {outcome: "ok", messages: [[seq, type, wireData]...], closed, config?}  open, poll
   *   {outcome: "ok", ack}                                                    push
   *   {outcome: "ok"}                                                         delete
   *   {outcome: "retry", after, reason}        5xx; a malformed answer (after null), a 429 without an ack too
   *   {outcome: "throttled", ack, after, reason}                              429 (inbox full)
   *   {outcome: "close", code, reason, clean}  clean: the server's own close (410 with closed)
   * `reason` is text for a person, except for a close it is the close reason.
   */
  function classify(request, status, headers, bodyText, {sent = 0, now = Date.now() / 1000} = {}) {
    if (!["open", "poll", "push", "delete"].includes(request)) {
      throw new TypeError(`classify: request must be open, poll, push or delete, got ${request}`);
    }
    const retryAfter = () => parseRetryAfter(header(headers, "Retry-After"), now);
    if (status >= 200 && status < 300) {
      if (request === "delete") return {outcome: "ok"};
      try {
        const body = parseBody(bodyText);
        if (request === "open") return openAnswer(body, header(headers, "Pollsession-Id"));
        if (request === "poll") return pollAnswer(body);
        return {outcome: "ok", ack: ackOf(body, sent)};
      } catch (err) {
        if (err instanceof Malformed) {
          return {outcome: "retry", after: null, reason: `a malformed ${request} answer: ${err.message}`};
        }
        if (err instanceof UnsupportedVersion) return {outcome: "close", code: 1002, reason: err.message, clean: false};
        throw err;
      }
    }
    const error = lenientJson(bodyText);
    const described = describeError(status, error);
    if (status === 410) {
      const closed = error && typeof error === "object" ? closedOf(error.closed, () => null) : null;
      if (closed) return {outcome: "close", code: closed.code, reason: closed.reason, clean: true};
      return {outcome: "close", code: 1006, reason: `the session is gone: the server no longer knows it (${described})`, clean: false};
    }
    if (status === 413) {
      const message = error && typeof error.message === "string" ? error.message : `the server refused the ${request} as too large (413)`;
      return {outcome: "close", code: 1009, reason: message, clean: false};
    }
    if (status === 429) {
      // Without an integer ack (a proxy's 429, say) it is a malformed answer.
      try {
        const ack = ackOf(parseBody(bodyText), request === "push" ? sent : Infinity);
        return {outcome: "throttled", ack, after: retryAfter(), reason: described};
      } catch (err) {
        if (!(err instanceof Malformed)) throw err;
        return {outcome: "retry", after: null, reason: `a malformed 429 answer: ${err.message}`};
      }
    }
    if (status >= 500) return {outcome: "retry", after: retryAfter(), reason: described};
    return {outcome: "close", code: 1006, reason: `the server refused the ${request}: ${described}`, clean: false};
  }

  function openAnswer(body, headerSid) {
    if (Object.hasOwn(body, "version") && body.version !== 1) {
      throw new UnsupportedVersion(`the server speaks protocol version ${JSON.stringify(body.version)}, not 1`);
    }
    let sid = body.sid;
    if (!sid) sid = headerSid;
    if (typeof sid !== "string" || !sid) throw new Malformed("the open answer carries no session id");
    const config = {sid};
    for (const [key, fallback] of Object.entries(CONFIG_DEFAULTS)) {
      const value = Object.hasOwn(body, key) ? body[key] : fallback;
      if (typeof value !== "number" || !(value >= 0)) {
        throw new Malformed(`expected ${key} to be a non-negative number, got ${JSON.stringify(value)}`);
      }
      config[key] = key === "poll_timeout" || key === "session_timeout" ? value : Math.floor(value);
    }
    config.inbox_limit = Math.max(1, config.inbox_limit);
    const answer = messagesAnswer(body, Object.hasOwn(body, "messages") ? body.messages : []);
    answer.config = config;
    return answer;
  }

  function pollAnswer(body) {
    return messagesAnswer(body, body.messages);
  }

  function messagesAnswer(body, messages) {
    if (!Array.isArray(messages)) throw new Malformed(`expected messages to be a list, got ${brief(messages)}`);
    const closed = closedOf(body.closed === undefined ? null : body.closed, (why) => { throw new Malformed(why); });
    return {outcome: "ok", messages: messages.map(messageOf), closed};
  }

  function messageOf(message, index) {
    if (message === null || typeof message !== "object" || Array.isArray(message)) {
      throw new Malformed(`messages[${index}] is not an object`);
    }
    const {seq, type, data} = message;
    if (!Number.isSafeInteger(seq) || seq < 1) throw new Malformed(`messages[${index}].seq must be an integer >= 1, got ${brief(seq)}`);
    if (!Object.hasOwn(message, "data")) throw new Malformed(`message ${seq} has no data`);
    if (type === "text") {
      if (typeof data !== "string") throw new Malformed(`message ${seq} is text but its data is not a string`);
    } else if (type === "binary") {
      if (typeof data !== "string" || !isCanonicalBase64(data)) {
        throw new Malformed(`message ${seq} is binary but its data is not canonical padded base64`);
      }
    } else if (type !== "json") {
      throw new Malformed(`message ${seq} has an unknown type ${brief(type)}`);
    }
    return [seq, type, data];
  }

  // `onBad(why)` decides what an invalid closed object means (throw, or null).
  function closedOf(value, onBad) {
    if (value === null) return null;
    if (typeof value !== "object" || Array.isArray(value)) return onBad(`expected closed to be null or an object, got ${brief(value)}`);
    const code = value.code;
    const reason = value.reason === undefined ? "" : value.reason;
    if (!Number.isSafeInteger(code) || typeof reason !== "string") {
      return onBad(`expected closed to hold an integer code and a string reason, got ${brief(value)}`);
    }
    return {code, reason};
  }

  function ackOf(body, sent) {
    const ack = body.ack;
    if (!Number.isSafeInteger(ack) || ack < 0) throw new Malformed(`expected an integer ack, got ${brief(ack)}`);
    if (ack > sent) throw new Malformed(`the server acknowledged seq ${ack}, but only ${sent} were sent`);
    return ack;
  }

  // A 2xx (or 429) body: a JSON object of valid Unicode, no number beyond a double.
  function parseBody(text) {
    if (typeof text !== "string") throw new Malformed("the answer has no body");
    let value;
    try {
      value = JSON.parse(text);
    } catch (err) {
      throw new Malformed(`the answer is not JSON: ${brief(text)}`);
    }
    if (value === null || typeof value !== "object" || Array.isArray(value)) {
      throw new Malformed(`expected a JSON object, got ${brief(value)}`);
    }
    try {
      checkJsonValue(value);
    } catch (err) {
      throw new Malformed(err instanceof RangeError && !(err instanceof WireError) ? "the answer is nested too deeply" : err.message);
    }
    return value;
  }

  function checkJsonValue(value) {
    if (typeof value === "string") {
      if (!isWellFormed(value)) throw new WireError("a string holds a lone surrogate (not Unicode)");
    } else if (typeof value === "number") {
      if (!Number.isFinite(value)) throw new WireError("a number is beyond the range of a double");
    } else if (Array.isArray(value)) {
      for (const item of value) checkJsonValue(item);
    } else if (value !== null && typeof value === "object") {
      for (const [key, item] of Object.entries(value)) {
        checkJsonValue(key);
        checkJsonValue(item);
      }
    }
  }

  function lenientJson(text) {
    try {
      return typeof text === "string" ? JSON.parse(text) : null;
    } catch (err) {
      return null;
    }
  }

  function header(headers, name) {
    if (!headers) return null;
    if (typeof headers.get === "function") return headers.get(name);
    const wanted = name.toLowerCase();
    for (const [key, value] of Object.entries(headers)) {
      if (key.toLowerCase() === wanted) return String(value);
    }
    return null;
  }

  const DELAY_SECONDS = /^[0-9]+(?:\.[0-9]+)?$/;
  const DAY = "(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)";
  const LONG_DAY = "(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)";
  const MONTH = "(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)";
  const TIME = "\\d{2}:\\d{2}:\\d{2}";
  const IMF_DATE = new RegExp(`^${DAY}, \\d{2} ${MONTH} \\d{4} ${TIME} GMT$`);
  const RFC850_DATE = new RegExp(`^${LONG_DAY}, \\d{2}-${MONTH}-\\d{2} ${TIME} GMT$`);
  const ASCTIME_DATE = new RegExp(`^${DAY} ${MONTH} [ \\d]\\d ${TIME} \\d{4}$`);

  /**
   * Seconds to wait from a Retry-After value: delay-seconds (decimals
   * tolerated) or an HTTP date, max(0, date - now); anything else is null.
   */
  function parseRetryAfter(value, now) {
    if (typeof value !== "string") return null;
    const text = value.trim();
    if (DELAY_SECONDS.test(text)) return Number(text);
    let date = NaN;
    if (IMF_DATE.test(text) || RFC850_DATE.test(text)) date = Date.parse(text);
    else if (ASCTIME_DATE.test(text)) date = Date.parse(`${text} GMT`);
    return Number.isNaN(date) ? null : Math.max(0, date / 1000 - now);
  }

  /**
   * What send() puts on the wire for `value` (tests/vectors/README.md, "encode"):
   * a string is text, an ArrayBuffer or a view (Uint8Array, DataView...) is
   * binary (copied), anything else json. Returns {type, data, size, json}:
   * data as on the wire (base64 for binary), size the protocol's message size,
   * json the JSON text of data. Throws a TypeError for what the protocol
   * refuses (a lone surrogate, NaN, Infinity, a value JSON cannot hold).
   */
  function encode(value) {
    if (typeof value === "string") {
      if (!isWellFormed(value)) {
        throw new TypeError("PollSession.send: the string holds a lone surrogate, which is not Unicode");
      }
      return wireEntry("text", utf8Length(value), JSON.stringify(value));
    }
    if (value instanceof ArrayBuffer || isSharedArrayBuffer(value)) {
      return binaryEntry(new Uint8Array(value.slice(0)));
    }
    if (ArrayBuffer.isView(value)) {
      return binaryEntry(new Uint8Array(value.buffer, value.byteOffset, value.byteLength).slice());
    }
    let json;
    try {
      json = JSON.stringify(value, (key, item) => {
        if (typeof item === "number" && !Number.isFinite(item)) throw new TypeError(`JSON cannot carry ${item}`);
        return item;
      });
    } catch (err) {
      throw new TypeError(`PollSession.send: cannot send this value as JSON: ${err.message}`);
    }
    if (json === undefined) {
      throw new TypeError(`PollSession.send: cannot send ${typeof value} as JSON`);
    }
    // Well-formed JSON.stringify writes a lone surrogate as a \udXXX escape (a
    // paired one as characters): such an escape, not itself escaped, is one.
    if (/(?<!\\)(?:\\\\)*\\ud[89a-f][0-9a-f]{2}/i.test(json)) {
      throw new TypeError("PollSession.send: a string in the value holds a lone surrogate, which is not Unicode");
    }
    return wireEntry("json", utf8Length(json), json);
  }

  function binaryEntry(bytes) {
    return wireEntry("binary", bytes.length, JSON.stringify(toBase64(bytes)));
  }

  function wireEntry(type, size, json) {
    return Object.freeze({type, size, json, get data() { return JSON.parse(json); }});
  }

  /**
   * De-duplication of server messages by seq. accept(messages) takes the
   * [seq, type, data] triples of one answer and returns the new ones, in
   * order; a message is new only if its seq is exactly ack + 1 (a lower seq is
   * a copy from a lost answer; a higher one would leave a hole, so it is
   * dropped and the server sends it again). `ack` is what the next poll carries.
   */
  class Inbound {
    ack = 0;

    accept(messages) {
      const fresh = [];
      for (const message of messages) {
        if (message[0] === this.ack + 1) {
          this.ack = message[0];
          fresh.push(message);
        }
      }
      return fresh;
    }
  }

  /**
   * The wait after the `failures`-th failed attempt in a row (1 for the
   * first), or null once maxRetries retries have failed: give up. The n-th
   * delay (from 0) is d = min(retryMaxDelay, retryBaseDelay * 2**n), scaled
   * into [d/2, d) by random(). Options default to DEFAULTS.
   */
  function backoffDelay(failures, options = {}, random = Math.random) {
    const {retryBaseDelay, retryMaxDelay, maxRetries} = Object.assign({}, DEFAULTS, options);
    if (failures > maxRetries) return null;
    const delay = Math.min(retryMaxDelay, retryBaseDelay * 2 ** (failures - 1));
    return delay * (0.5 + 0.5 * random());
  }

  const protocol = Object.freeze({
    VERSION: 1,
    DEFAULTS: Object.freeze({
      maxRetries: DEFAULTS.maxRetries,
      retryBaseDelay: DEFAULTS.retryBaseDelay,
      retryMaxDelay: DEFAULTS.retryMaxDelay,
      pollMargin: HOLD_MARGIN,
      requestTimeout: REQUEST_TIMEOUT,
      config: CONFIG_DEFAULTS,
    }),
    classify,
    encode,
    Inbound,
    backoffDelay,
    parseRetryAfter,
  });

  // ======================================================================
  // The session: I/O and timing around the rules above.
  // ======================================================================

  class PollSession extends EventTarget {
    #url;
    #options;
    #phase = "connecting";
    #binaryType;
    #handlers = {open: null, message: null, error: null, close: null};

    #sid = null;
    #config = null; // the open answer's config, once open

    // Server to client.
    #inbound = new Inbound();

    // Client to server: messages in seq order, kept until acknowledged.
    #outbox = [];
    #nextSeq = 0;
    #highestSent = 0;
    #buffered = 0;
    #pushing = false;
    #pushPromise = null;
    #flushQueued = false;

    #closeRequest = null; // {code, reason} given to close()
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
    get readyState() { return READY_STATES[this.#phase]; }
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
     * once, so the caller may reuse its buffer. Throws a TypeError (queueing
     * nothing) for what the protocol cannot carry, a RangeError for a message
     * above the server's max_message_size. Ignored once closing or closed.
     */
    send(data) {
      if (this.#phase !== "connecting" && this.#phase !== "open") return;
      const isBlob = typeof Blob === "function" && data instanceof Blob;
      const encoded = isBlob ? null : encode(data);
      const entry = isBlob ? {type: "binary", size: data.size, json: null, pending: null}
        : {type: encoded.type, size: encoded.size, json: encoded.json, pending: null};
      const limit = this.#config ? this.#config.max_message_size : Infinity;
      if (entry.size > limit) {
        throw new RangeError(
          `PollSession.send: message of ${entry.size} bytes exceeds the server's ` +
          `max_message_size of ${limit} bytes`);
      }
      entry.seq = ++this.#nextSeq;
      if (isBlob) {
        entry.pending = data.arrayBuffer().then((buffer) => {
          entry.pending = null;
          setWire(entry, encode(new Uint8Array(buffer)).json);
          this.#scheduleFlush();
        }, (err) => {
          this.#fail(1006, `could not read a Blob to send: ${err}`);
        });
      } else {
        setWire(entry, entry.json);
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
      if (this.#phase !== "connecting" && this.#phase !== "open") return;
      const wasConnecting = this.#phase === "connecting";
      this.#phase = "closing";
      this.#closeRequest = {code: code === undefined ? 1000 : code, reason: text};
      if (!wasConnecting) this.#clientClose(); // else #open finishes the job
    }

    // ---- the one retry loop ---------------------------------------------

    /**
     * Make one request until its answer settles it. `prepare()` gives each
     * attempt's request ({method, query, body, sent, timeout, signal}), or null
     * when there is nothing left to send. Every answer goes through
     * protocol.classify; "retry" waits max(Retry-After, backoffDelay) and goes
     * again until the budget of maxRetries is spent (then a close 1006),
     * "throttled" calls onThrottled and waits max(Retry-After, the backoff of
     * the 429s in a row). Resolves the outcome that ended it ("ok" or "close"),
     * the retry or throttled outcome that `abandon(outcome)` chose to stop at,
     * or null: the session closed, `signal` aborted, or nothing to send.
     */
    async #exchange(kind, prepare, {onThrottled = () => {}, abandon = () => false} = {}) {
      let failures = 0;
      let throttles = 0;
      for (;;) {
        const request = this.#phase === "closed" ? null : prepare();
        if (request === null || (request.signal && request.signal.aborted)) return null;
        let outcome;
        try {
          const res = await this.#request(request);
          outcome = classify(kind, res.status, res.headers, res.text, {sent: request.sent || 0, now: Date.now() / 1000});
          outcome.status = res.status; // for the caller: a 410 needs no DELETE
        } catch (err) {
          if (this.#phase === "closed" || (request.signal && request.signal.aborted)) return null;
          const what = err && err.name === "TimeoutError" ? "timed out" : "network error";
          outcome = {outcome: "retry", after: null, reason: what};
        }
        if (this.#phase === "closed") return null;
        if (outcome.outcome === "ok" || outcome.outcome === "close") return outcome;
        // A 429 throttles a push (the inbox is full); to anything else it is a failure like a 5xx.
        const throttled = outcome.outcome === "throttled" && kind === "push";
        if (throttled) onThrottled(outcome);
        if (abandon(outcome)) return outcome;
        let wait;
        if (throttled) {
          failures = 0;
          wait = backoffDelay(++throttles, Object.assign({}, this.#options, {maxRetries: Infinity}));
        } else {
          wait = backoffDelay(++failures, this.#options);
          if (wait === null) {
            return {outcome: "close", code: 1006, reason: giveUpReason(kind, outcome.reason, failures), clean: false};
          }
        }
        await this.#sleep(Math.max(outcome.after === null ? 0 : outcome.after, wait));
      }
    }

    // A close outcome ends the session: the server's own close is clean.
    #end(outcome) {
      if (outcome.clean) this.#finish(outcome.code, outcome.reason, true);
      else this.#fail(outcome.code, outcome.reason, outcome.status !== 410);
    }

    // ---- opening --------------------------------------------------------

    async #open() {
      const outcome = await this.#exchange("open", () => ({method: "GET", withSid: false, timeout: REQUEST_TIMEOUT}), {
        abandon: () => this.#phase !== "connecting", // close() was called: stop trying
      });
      if (outcome === null) return;
      if (outcome.outcome !== "ok") {
        if (outcome.outcome === "close") return this.#end(outcome);
        return this.#finish(1006, "closed before the session opened", false);
      }
      this.#sid = outcome.config.sid;
      this.#config = Object.freeze(outcome.config);

      if (this.#phase === "closing") { // close() was called while connecting
        this.#phase = "deleting";
        const clean = await this.#deleteSession();
        return this.#finish(this.#closeRequest.code, this.#closeRequest.reason, clean);
      }
      const limit = this.#config.max_message_size;
      const tooBig = this.#outbox.find((entry) => entry.size > limit);
      if (tooBig) {
        return this.#fail(1009, `a queued message of ${tooBig.size} bytes exceeds the server's ` +
          `max_message_size of ${limit} bytes`);
      }

      this.#phase = "open";
      this.#emit(new Event("open"));
      this.#kickPush();
      if (this.#phase === "closed") return;
      this.#deliver(outcome.messages);
      if (outcome.closed) return this.#serverClosed(outcome.closed);
      this.#pollLoop();
    }

    // ---- pulling: the long poll -----------------------------------------

    async #pollLoop() {
      while (this.#phase === "open" || this.#phase === "closing") {
        const abort = new AbortController();
        this.#pollAbort = abort;
        const outcome = await this.#exchange("poll", () => {
          const wait = this.#options.pollTimeout;
          const query = {ack: this.#inbound.ack};
          if (wait !== null) query.wait = wait;
          const hold = Math.min(wait === null ? Infinity : wait, this.#config.poll_timeout);
          return {method: "GET", query, signal: abort.signal, timeout: hold + HOLD_MARGIN};
        });
        if (this.#pollAbort === abort) this.#pollAbort = null;
        // Deleting or acknowledging: another request owns the session now.
        if (outcome === null || (this.#phase !== "open" && this.#phase !== "closing")) return;
        if (outcome.outcome === "close") return this.#end(outcome);
        this.#deliver(outcome.messages);
        if (outcome.closed) return this.#serverClosed(outcome.closed);
      }
    }

    // Hand new messages to the page in seq order; copies were dropped by Inbound.
    #deliver(messages) {
      for (const [, type, wire] of this.#inbound.accept(messages)) {
        if (this.#phase === "closed") return;
        let data = wire;
        if (type === "binary") {
          const bytes = fromBase64(wire);
          data = this.#binaryType === "blob" ? new Blob([bytes]) : bytes.buffer;
        }
        this.#emit(new MessageEvent("message", {data, origin: this.#url.origin}));
      }
    }

    // The server closed the session: acknowledge everything with one last poll
    // so the server forgets it now, then report the server's code and reason.
    async #serverClosed(closed) {
      if (this.#phase !== "open" && this.#phase !== "closing") return;
      this.#phase = "acknowledging";
      if (this.#pollAbort) this.#pollAbort.abort();
      for (let round = 0; round < FINAL_POLLS; round++) {
        const before = this.#inbound.ack;
        // One try per round, no backoff: the close is known, only the server's forgetting is left.
        const outcome = await this.#exchange("poll", () => (
          {method: "GET", query: {ack: this.#inbound.ack, wait: 0}, timeout: REQUEST_TIMEOUT}), {abandon: () => true});
        if (outcome === null || outcome.outcome !== "ok") break; // the server forgets it on expiry anyway
        this.#deliver(outcome.messages);
        if (this.#inbound.ack === before) break; // the server has our last ack: done
      }
      this.#finish(closed.code, closed.reason, true);
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
        while (this.#sid !== null && (this.#phase === "open" || this.#phase === "closing")) {
          const batch = this.#nextBatch();
          if (batch === null) return; // nothing ready: the next send() starts the loop again
          if (batch.tooBig) {
            return this.#fail(1009, `a message of ${batch.tooBig.size} bytes does not fit the ` +
              `server's max_body_size of ${this.#config.max_body_size} bytes`);
          }
          const outcome = await this.#exchange("push", () => {
            const next = this.#nextBatch(); // after a 429, only what it did not take
            if (next === null || next.tooBig) return null;
            this.#highestSent = Math.max(this.#highestSent, next.last);
            return {method: "POST", body: next.body, sent: this.#highestSent, timeout: REQUEST_TIMEOUT};
          }, {
            onThrottled: (throttled) => this.#acknowledge(throttled.ack),
            // The session does not read fast enough; while closing, do not wait for it.
            abandon: (failed) => failed.outcome === "throttled" && this.#phase !== "open",
          });
          if (outcome === null) continue;
          if (outcome.outcome === "ok") {
            this.#acknowledge(outcome.ack);
          } else if (outcome.outcome === "close") {
            // A POST to a closed session: let one last poll deliver the rest.
            return outcome.clean ? this.#serverClosed(outcome) : this.#end(outcome);
          } else {
            return; // abandoned while closing
          }
        }
      } finally {
        this.#pushing = false;
      }
    }

    // The longest run of ready, unacknowledged messages that fits one POST.
    #nextBatch() {
      const parts = [];
      let bytes = EMPTY_BODY_BYTES;
      let last = 0;
      for (const entry of this.#outbox) {
        if (entry.pending || parts.length >= this.#config.inbox_limit) break;
        const extra = entry.entryBytes + (parts.length ? 1 : 0);
        if (bytes + extra > this.#config.max_body_size) {
          if (parts.length) break;
          return {tooBig: entry};
        }
        parts.push(entry.entryJson);
        bytes += extra;
        last = entry.seq;
      }
      return parts.length ? {body: '{"messages":[' + parts.join(",") + "]}", last} : null;
    }

    #acknowledge(ack) {
      let drop = 0;
      while (drop < this.#outbox.length && this.#outbox[drop].seq <= ack) {
        this.#buffered -= this.#outbox[drop].size;
        drop++;
      }
      this.#outbox.splice(0, drop);
    }

    // ---- closing --------------------------------------------------------

    async #clientClose() {
      // Like WebSocket, data sent before close() goes out before the close.
      await Promise.allSettled(this.#outbox.map((entry) => entry.pending).filter(Boolean));
      if (this.#phase !== "closing") return; // the server closed first, or a failure
      await this.#kickPush();
      if (this.#phase !== "closing") return;
      this.#phase = "deleting";
      if (this.#pollAbort) this.#pollAbort.abort();
      const clean = await this.#deleteSession();
      this.#finish(this.#closeRequest.code, this.#closeRequest.reason, clean);
    }

    // DELETE the session; true once the server answered it with a 2xx.
    async #deleteSession() {
      const outcome = await this.#exchange("delete", () => ({method: "DELETE", timeout: REQUEST_TIMEOUT}));
      return outcome !== null && outcome.outcome === "ok";
    }

    // Fail the session: readyState CLOSED, then error, then close (as WebSocket does).
    #fail(code, reason, deleteSession = true) {
      if (this.#phase === "closed") return;
      this.#teardown();
      if (this.#sid !== null && deleteSession) this.#deleteInBackground(); // not after a 410: it is gone
      this.#emit(new Event("error"));
      this.#emit(closeEvent(code, reason, false));
    }

    #finish(code, reason, wasClean) {
      if (this.#phase === "closed") return;
      this.#teardown();
      this.#emit(closeEvent(code, reason, wasClean));
    }

    #teardown() {
      this.#phase = "closed";
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
        if (this.#sid !== null && this.#phase !== "closed") this.#deleteInBackground();
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

    // One HTTP request, answer body read within the timeout. Resolves
    // {status, headers, text}; rejects on a network error, a timeout or `signal`.
    async #request({method, query = null, body = undefined, withSid = true, signal = null, timeout}) {
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
        return {status: res.status, headers: res.headers, text: res.status === 204 ? null : text};
      } catch (err) {
        throw abort.signal.aborted && abort.signal.reason ? abort.signal.reason : err;
      } finally {
        clearTimeout(timer);
        if (signal) signal.removeEventListener("abort", forward);
      }
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
  Object.defineProperty(PollSession, "protocol", {value: protocol, enumerable: true});

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

  function giveUpReason(kind, why, failures) {
    if (kind === "open") return `could not open the session (${why}) after ${failures} attempts`;
    const doing = {poll: "polling", push: "sending", delete: "deleting the session"}[kind];
    return `${doing} failed (${why}) ${failures} times in a row`;
  }

  function setWire(entry, json) {
    entry.json = json;
    entry.entryJson = `{"seq":${entry.seq},"type":"${entry.type}","data":${json}}`;
    entry.entryBytes = entry.type === "binary" ? entry.entryJson.length : utf8Length(entry.entryJson);
  }

  function isSharedArrayBuffer(value) {
    return typeof SharedArrayBuffer === "function" && value instanceof SharedArrayBuffer;
  }

  function isWellFormed(text) {
    if (typeof text.isWellFormed === "function") return text.isWellFormed();
    return !/[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/.test(text);
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

  const BASE64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

  // RFC 4648 section 4, padded, no whitespace, and canonical: the bits a
  // padded last group leaves over are zero (so one byte string has one text).
  function isCanonicalBase64(text) {
    if (!BASE64.test(text)) return false;
    if (text.endsWith("==")) return (BASE64_ALPHABET.indexOf(text[text.length - 3]) & 0x0f) === 0;
    if (text.endsWith("=")) return (BASE64_ALPHABET.indexOf(text[text.length - 2]) & 0x03) === 0;
    return true;
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

  function describeError(status, body) {
    const code = body && typeof body.error === "string" ? ` ${body.error}` : "";
    const message = body && typeof body.message === "string" ? `: ${body.message}` : "";
    return `${status}${code}${message}`;
  }

  function brief(value) {
    let text;
    try {
      text = typeof value === "string" ? value : JSON.stringify(value);
    } catch (err) {
      text = String(value);
    }
    text = String(text);
    return text.length > 80 ? `${text.slice(0, 77)}...` : text;
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
