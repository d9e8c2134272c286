// ES module entry of the pollsession browser client: `import {PollSession} from "/pollsession.mjs"`.
// pollsession.js is a classic script (it defines globalThis.PollSession); this
// file loads it as a module and re-exports the class. Serve it beside
// pollsession.js (same directory in URL space) with a JavaScript content type.
import "./pollsession.js";

export const PollSession = globalThis.PollSession;
export default PollSession;
