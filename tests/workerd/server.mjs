#!/usr/bin/env node
// Serve Cloudflare D1's REST API from workerd's real D1 (via Miniflare) for knrun's tests.
//
//   node server.mjs [--port N] [--persist DIR] [--token T] [--account A] [--database D]
//
// Each option may also come from the environment: WORKERD_D1_PORT (default 0: any free port),
// WORKERD_D1_PERSIST (a folder for the SQLite files; unset or empty: in memory),
// WORKERD_D1_TOKEN (default sim-d1-token), WORKERD_D1_ACCOUNT (default sim-account),
// WORKERD_D1_DATABASE (default sim-database). Flags win over the environment.
//
// Prints exactly one line on stdout, `READY http://127.0.0.1:<port>`, once requests can be
// served; everything else (Miniflare's and workerd's own output) goes to stderr. Stops cleanly on
// SIGTERM or SIGINT, and when stdin is a pipe, socket or terminal that is closed (so a parent that
// dies takes the server with it). Stdin that is /dev/null or a file is not watched.

import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { Log, LogLevel, Miniflare } from "miniflare";

const here = path.dirname(fileURLToPath(import.meta.url));

const { values: flags } = parseArgs({
  options: {
    port: { type: "string" },
    persist: { type: "string" },
    token: { type: "string" },
    account: { type: "string" },
    database: { type: "string" },
  },
  strict: true,
  allowPositionals: false,
});

const env = process.env;
const setting = (flag, name, fallback) => flags[flag] ?? (env[name] || fallback);
const port = Number.parseInt(setting("port", "WORKERD_D1_PORT", "0"), 10);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  process.stderr.write(`server.mjs: bad port ${setting("port", "WORKERD_D1_PORT", "0")}\n`);
  process.exit(2);
}
const persist = setting("persist", "WORKERD_D1_PERSIST", "");
const token = setting("token", "WORKERD_D1_TOKEN", "sim-d1-token");
const account = setting("account", "WORKERD_D1_ACCOUNT", "sim-account");
const database = setting("database", "WORKERD_D1_DATABASE", "sim-database");

class StderrLog extends Log {
  log(message) {
    process.stderr.write(`${message}\n`);
  }
}

// Miniflare keeps its scratch files (and an in-memory database's) in a folder under os.tmpdir()
// that dispose() removes only in the background; give it a folder of its own, removed at exit.
const scratch = fs.mkdtempSync(path.join(os.tmpdir(), "knrun-workerd-d1-"));
process.env.TMPDIR = scratch;
process.on("exit", () => fs.rmSync(scratch, { recursive: true, force: true }));

const mf = new Miniflare({
  name: "knrun-d1-rest",
  modules: true,
  scriptPath: path.join(here, "worker.mjs"),
  compatibilityDate: "2026-04-01",
  d1Databases: { DB: database },
  d1Persist: persist ? path.resolve(persist) : false,
  bindings: { API_TOKEN: token, ACCOUNT_ID: account, DATABASE_ID: database },
  host: "127.0.0.1",
  port,
  // Never fetch Request.cf from the internet (Miniflare's default); use its built-in placeholder.
  cf: false,
  log: new StderrLog(LogLevel.WARN),
  handleRuntimeStdio(stdout, stderr) {
    stdout.pipe(process.stderr);
    stderr.pipe(process.stderr);
  },
});

let stopping = false;
async function stop(code) {
  if (stopping) return;
  stopping = true;
  try {
    await mf.dispose();
  } catch (error) {
    process.stderr.write(`server.mjs: dispose failed: ${error?.stack ?? error}\n`);
    code = code || 1;
  }
  process.exit(code);
}

// Miniflare's own signal listeners SIGKILL workerd and exit with 128+signal at once; replace them
// with an orderly dispose() and exit code 0. (Its "exit" hook, which cleans up, stays.)
process.removeAllListeners("SIGTERM");
process.removeAllListeners("SIGINT");
process.on("SIGTERM", () => stop(0));
process.on("SIGINT", () => stop(0));

function stdinIsWatchable() {
  if (process.stdin.isTTY) return true;
  try {
    const stat = fs.fstatSync(0);
    return stat.isFIFO() || stat.isSocket();
  } catch {
    return false;
  }
}
if (stdinIsWatchable()) {
  process.stdin.on("end", () => stop(0));
  process.stdin.on("close", () => stop(0));
  process.stdin.on("error", () => stop(0));
  process.stdin.resume();
}

try {
  const url = await mf.ready;
  process.stdout.write(`READY http://127.0.0.1:${url.port}\n`);
} catch (error) {
  process.stderr.write(`server.mjs: Miniflare failed to start: ${error?.stack ?? error}\n`);
  await stop(1);
}
