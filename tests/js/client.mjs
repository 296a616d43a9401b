// A tally device built on the real JavaScript automerge-repo client (npm
// `@automerge/automerge-repo` and `@automerge/automerge-repo-network-websocket`, 2.5.x), driven by
// tests/e2e/interop/js.rs (the interop suite, tests/e2e/interop.rs).
//
//   node client.mjs WS_URL read AUTOMERGE_URL
//       finds the document by its URL, waits until it is ready, prints on stdout one JSON object:
//       `doc`, the document as the JS client sees it, and `bytes`, the document saved
//       (`repo.export`, base64), for the Rust side to read with its own types.
//   node client.mjs WS_URL push-collection BASE64
//       imports a document saved by the Rust side (`Automerge::save`) as a new document
//       (`repo.import`), prints its `automerge:` URL on stdout at once (so that a refusal can be
//       matched to the document), waits until the server has every change of it, then prints
//       `acknowledged`.
//   node client.mjs WS_URL push-change AUTOMERGE_URL BASE64
//       finds the document, applies the changes in BASE64 (`Automerge::save_after` bytes) to it
//       (`repo.import(bytes, { docId })`), waits until the server has them, prints the heads.
//
// WS_URL carries the device's token as the `token` query parameter (browsers cannot set headers
// on a WebSocket upgrade). Any `error` message from the server is printed on stderr as
// `server error: ...` and ends the run with status 2; an unavailable document ends it with
// status 3, a timeout with status 4, anything else with status 1. The server's acknowledgement
// is read from the sync state the repo keeps for the server (`theirHeads`, as samod's
// `they_have_our_changes` does): the server answers a sync message only after it committed it.
//
// package.json pins cbor-extract (cbor-x's optional native decoder) to 2.2.2 through `overrides`:
// the registry reachable here has no platform packages for 2.2.3, and a lockfile without them
// makes `npm ci` refuse to install.

import {
  Repo,
  cbor,
  decodeHeads,
  isValidAutomergeUrl,
} from "@automerge/automerge-repo"
import { WebSocketClientAdapter } from "@automerge/automerge-repo-network-websocket"

const TIMEOUT_MS = Number(process.env.TALLY_JS_TIMEOUT_MS ?? 15000)
let stage = "starting"

let failed = false
function fail(status, message) {
  // The first failure is the one to report (a rejected `find` also rejects its caller).
  if (failed) return
  failed = true
  process.stderr.write(`client.mjs: ${message}\n`, () => process.exit(status))
  // In case the write callback never runs.
  setTimeout(() => process.exit(status), 500).unref()
}

function done(output) {
  failed = true // nothing may report after the result
  process.stdout.write(output + "\n", () => process.exit(0))
}

// The stock adapter throws socket errors from an event handler (e.g. `Unexpected server
// response: 401` for a refused token): report them like any other failure.
const report = e =>
  fail(1, `${stage}: ${process.env.TALLY_JS_DEBUG ? e?.stack : (e?.message ?? e)}`)
process.on("uncaughtException", report)
process.on("unhandledRejection", report)
// Not unref'd: the run ends by `done`, a failure or this, never by running out of work.
setTimeout(
  () => fail(4, `timed out after ${TIMEOUT_MS} ms while ${stage}`),
  TIMEOUT_MS,
)
process.on("beforeExit", () => fail(1, `${stage}: stopped with nothing left to wait for`))

/** The websocket adapter, plus what the stock one only logs: the server's `error` messages. */
class TallyAdapter extends WebSocketClientAdapter {
  receiveMessage(bytes) {
    let message
    try {
      message = cbor.decode(new Uint8Array(bytes))
    } catch {
      // The stock adapter reports undecodable frames itself.
    }
    if (message?.type === "error") {
      fail(2, `server error: ${message.message}`)
      return
    }
    super.receiveMessage(bytes)
  }
}

function usage() {
  fail(
    1,
    "usage: node client.mjs WS_URL (read AUTOMERGE_URL | push-collection BASE64 | push-change AUTOMERGE_URL BASE64)",
  )
}

function automergeUrl(arg) {
  if (!isValidAutomergeUrl(arg)) throw new Error(`not an automerge URL: ${arg}`)
  return arg
}

function base64Bytes(arg) {
  const bytes = new Uint8Array(Buffer.from(arg ?? "", "base64"))
  if (bytes.byteLength === 0) throw new Error("no document bytes given")
  return bytes
}

/** Connects and waits for the server's `peer` message; returns the repo and the server's peer id. */
async function connect(url) {
  // No reconnects within a run (the retry interval outlasts the timeout): a retry would offer a
  // refused change again and hide the refusal.
  const adapter = new TallyAdapter(url, 10 * TIMEOUT_MS)
  const peer = new Promise(resolve =>
    adapter.once("peer-candidate", ({ peerId }) => resolve(peerId)),
  )
  adapter.on("peer-disconnected", () =>
    fail(1, `${stage}: the server closed the connection`),
  )
  const repo = new Repo({
    network: [adapter],
    peerId: `tally-js-${Math.random().toString(36).slice(2)}`,
  })
  stage = `connecting to ${url.replace(/token=[^&]*/, "token=…")}`
  const serverPeer = await peer
  if (!String(serverPeer).startsWith("tally-server-"))
    throw new Error(`unexpected server peer id ${serverPeer}`)
  return { repo, serverPeer }
}

/** Resolves once the server's sync messages say it has every one of `heads` (hex hashes). */
function serverHas(repo, serverPeer, documentId, heads) {
  return new Promise(resolve => {
    const check = ({ documentId: doc, peerId, syncState }) => {
      if (doc !== documentId || peerId !== serverPeer) return
      const theirs = syncState?.theirHeads
      if (theirs && heads.every(h => theirs.includes(h))) {
        repo.synchronizer.off("sync-state", check)
        resolve()
      }
    }
    repo.synchronizer.on("sync-state", check)
  })
}

async function find(repo, url) {
  stage = `finding ${url}`
  try {
    return await repo.find(url)
  } catch (e) {
    if (/unavailable/.test(String(e?.message)))
      fail(3, `document ${url} is unavailable on the server`)
    throw e
  }
}

function toJson(value) {
  return JSON.stringify(value, (_, v) =>
    v instanceof Uint8Array ? Buffer.from(v).toString("base64") : v,
  )
}

async function main() {
  const [wsUrl, command, ...args] = process.argv.slice(2)
  if (!wsUrl || !command) return usage()
  if (!/^wss?:\/\//.test(wsUrl)) throw new Error(`not a ws:// URL: ${wsUrl}`)

  switch (command) {
    case "read": {
      const url = automergeUrl(args[0])
      const { repo } = await connect(wsUrl)
      const handle = await find(repo, url)
      stage = `saving ${url}`
      const bytes = await repo.export(handle.documentId)
      return done(toJson({ doc: handle.doc(), bytes }))
    }
    case "push-collection": {
      const bytes = base64Bytes(args[0])
      const { repo, serverPeer } = await connect(wsUrl)
      stage = "importing the document"
      // Ready at once (a new local document); no await until the acknowledgement is watched,
      // so that no sync answer can slip by unseen.
      const handle = repo.import(bytes)
      if (!handle.isReady()) throw new Error(`imported handle is ${handle.state}`)
      const heads = decodeHeads(handle.heads())
      process.stdout.write(handle.url + "\n")
      stage = `waiting for the server to acknowledge ${handle.url}`
      await serverHas(repo, serverPeer, handle.documentId, heads)
      return done("acknowledged")
    }
    case "push-change": {
      const url = automergeUrl(args[0])
      const bytes = base64Bytes(args[1])
      const { repo, serverPeer } = await connect(wsUrl)
      const handle = await find(repo, url)
      stage = `applying the change to ${url}`
      const before = decodeHeads(handle.heads())
      repo.import(bytes, { docId: handle.documentId })
      const heads = decodeHeads(handle.heads())
      if (heads.every(h => before.includes(h)))
        throw new Error("the change bytes changed nothing")
      stage = `waiting for the server to acknowledge the change to ${url}`
      await serverHas(repo, serverPeer, handle.documentId, heads)
      return done(toJson(heads))
    }
    default:
      return usage()
  }
}

main().catch(e => fail(1, `${stage}: ${e?.message ?? e}`))
