// Cloudflare D1's REST envelope (`/client/v4/accounts/{account}/d1/database/{db}/query|raw`)
// mapped onto a real D1 binding (`env.DB`), as run by workerd inside Miniflare.
//
// Every statement of one request goes to D1 in one call, which D1 runs as one transaction:
//   /query -> env.DB.batch([...]) (results as objects, like the binding gives them);
//   /raw   -> the same "/query" call that batch() makes, but asking for D1's ROWS_AND_COLUMNS
//             form and not converting it, so columns survive even with no rows (see rawBatch).
// A single `sql` without params may hold several statements joined by ';': it is split here
// (quotes, comments and CREATE TRIGGER ... END are respected) and the parts run as one batch,
// so there is one result per statement, as the REST API returns. env.DB.exec is not used: it
// splits on newlines and returns no rows or meta.

const ROUTE = /^\/client\/v4\/accounts\/([^/]+)\/d1\/database\/([^/]+)\/(query|raw)$/;

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const route = ROUTE.exec(url.pathname);
    if (request.method !== "POST" || route === null) {
      return failure(404, 7000, "No route for that URI");
    }
    if (request.headers.get("authorization") !== `Bearer ${env.API_TOKEN}`) {
      return failure(401, 10000, "Authentication error");
    }
    const [, account, database, kind] = route;
    if (account !== env.ACCOUNT_ID || database !== env.DATABASE_ID) {
      return failure(404, 7404, `The database ${database} could not be found`);
    }
    let statements;
    try {
      statements = parseBody(await request.text());
    } catch (error) {
      return failure(400, 7400, `Invalid request body: ${error.message}`);
    }
    try {
      const prepared = statements.map(({ sql, params }) => env.DB.prepare(sql).bind(...params));
      const results = kind === "raw" ? await rawBatch(env.DB, prepared) : await env.DB.batch(prepared);
      return json(200, {
        success: true,
        errors: [],
        messages: [],
        result: results.map((r) => ({ results: r.results, success: r.success, meta: r.meta })),
      });
    } catch (error) {
      // bind() throws D1_TYPE_ERROR; batch() throws "D1_ERROR: <SQLite's message>".
      return failure(400, 7500, error instanceof Error ? error.message : String(error));
    }
  },
};

// What DB.batch() does, minus its conversion of {columns, rows} into objects. It uses the
// binding's own session object; if a future binding hides it, fall back to batch() and rebuild
// columns from the first row (columns are then empty when there are no rows).
async function rawBatch(db, prepared) {
  const session = db.alwaysPrimarySession;
  if (session && typeof session._sendOrThrow === "function") {
    const span = { setAttribute() {} };
    const answer = await session._sendOrThrow(
      "/query",
      prepared.map((s) => s.statement),
      prepared.map((s) => s.params),
      "ROWS_AND_COLUMNS",
      span,
    );
    return (Array.isArray(answer) ? answer : [answer]).map((r) => ({
      success: r.success,
      meta: r.meta,
      results: Array.isArray(r.results)
        ? objectsToRaw(r.results)
        : (r.results ?? { columns: [], rows: [] }),
    }));
  }
  const results = await db.batch(prepared);
  return results.map((r) => ({ ...r, results: objectsToRaw(r.results) }));
}

function objectsToRaw(rows) {
  const columns = rows.length ? Object.keys(rows[0]) : [];
  return { columns, rows: rows.map((row) => columns.map((c) => row[c])) };
}

function parseBody(text) {
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    throw new Error("not JSON");
  }
  if (body === null || typeof body !== "object" || Array.isArray(body)) {
    throw new Error("expected {'sql', 'params'} or {'batch': [...]}");
  }
  let items;
  if (Array.isArray(body.batch)) {
    items = body.batch;
  } else if ("sql" in body) {
    items = [body];
  } else {
    throw new Error("expected {'sql', 'params'} or {'batch': [...]}");
  }
  if (items.length === 0) throw new Error("empty batch");
  const statements = [];
  for (const item of items) {
    if (item === null || typeof item !== "object" || typeof item.sql !== "string") {
      throw new Error("every statement needs an 'sql' string");
    }
    const params = item.params ?? [];
    if (!Array.isArray(params)) throw new Error("'params' must be an array");
    if (params.length === 0 && items.length === 1) {
      for (const sql of splitStatements(item.sql)) statements.push({ sql, params: [] });
    } else {
      statements.push({ sql: item.sql, params });
    }
  }
  return statements;
}

// Split SQL text on top-level ';'. Quoted text ('', "", ``, []) and comments are skipped over;
// inside CREATE TRIGGER a ';' ends the statement only right after END (as sqlite3_complete does).
// Text that holds no statement at all is passed through unchanged, so D1 answers it itself.
function splitStatements(sql) {
  const parts = [];
  let start = 0;
  let i = 0;
  let lastWord = "";
  let words = [];
  const n = sql.length;
  while (i < n) {
    const c = sql[i];
    if (c === "'" || c === '"' || c === "`" || c === "[") {
      const close = c === "[" ? "]" : c;
      i += 1;
      while (i < n) {
        if (sql[i] === close) {
          if (close !== "]" && sql[i + 1] === close) {
            i += 2;
            continue;
          }
          break;
        }
        i += 1;
      }
      i += 1;
      lastWord = "";
    } else if (c === "-" && sql[i + 1] === "-") {
      while (i < n && sql[i] !== "\n") i += 1;
    } else if (c === "/" && sql[i + 1] === "*") {
      const end = sql.indexOf("*/", i + 2);
      i = end === -1 ? n : end + 2;
    } else if (/[A-Za-z_]/.test(c)) {
      let j = i;
      while (j < n && /[A-Za-z0-9_$]/.test(sql[j])) j += 1;
      lastWord = sql.slice(i, j).toUpperCase();
      if (words.length < 3) words.push(lastWord);
      i = j;
    } else if (c === ";") {
      const inTrigger =
        words[0] === "CREATE" &&
        (words[1] === "TRIGGER" ||
          ((words[1] === "TEMP" || words[1] === "TEMPORARY") && words[2] === "TRIGGER"));
      if (!inTrigger || lastWord === "END") {
        parts.push(sql.slice(start, i + 1));
        start = i + 1;
        words = [];
      }
      lastWord = "";
      i += 1;
    } else {
      if (!/\s/.test(c)) lastWord = "";
      i += 1;
    }
  }
  parts.push(sql.slice(start));
  const statements = parts.map((p) => p.trim()).filter((p) => hasStatement(p));
  return statements.length ? statements : [sql];
}

function hasStatement(text) {
  const stripped = text
    .replace(/--[^\n]*/g, "")
    .replace(/\/\*[\s\S]*?\*\//g, "")
    .replace(/;/g, "");
  return stripped.trim().length > 0;
}

function failure(status, code, message) {
  return json(status, { success: false, errors: [{ code, message }], messages: [], result: null });
}

function json(status, payload) {
  return new Response(JSON.stringify(payload), {
    status,
    headers: { "content-type": "application/json" },
  });
}
