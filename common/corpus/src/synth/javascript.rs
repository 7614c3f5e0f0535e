//! JavaScript: benign families (browser front-end and Node.js).

use rand::Rng;

use super::names::{self, fill, pick, R};
use super::{Draft, Family};

pub(crate) const FAMILIES: &[Family] = &[
    Family {
        name: "form-validation",
        description: "Front-end code that validates and submits a web form",
        gen: form_validation,
    },
    Family {
        name: "fetch-dashboard",
        description: "A dashboard widget that fetches JSON from an API and renders it into the DOM",
        gen: dashboard,
    },
    Family {
        name: "express-api",
        description: "A small Express REST API service",
        gen: express_api,
    },
    Family {
        name: "jest-test-helpers",
        description: "Test helpers and unit tests for a JavaScript module",
        gen: jest_tests,
    },
    Family {
        name: "csv-etl",
        description: "A Node.js ETL job that transforms CSV exports into JSON records",
        gen: csv_etl,
    },
    Family {
        name: "service-worker-cache",
        description: "A service worker that caches static assets for offline use",
        gen: service_worker,
    },
];

pub(crate) fn banner(r: &mut R, what: &str) -> String {
    match r.random_range(0..3) {
        0 => format!("/**\n * {what}\n * @author {}\n */\n", names::user(r)),
        1 => format!("// {what}\n"),
        _ => format!("'use strict';\n// {what}\n\n"),
    }
}

fn form_validation(r: &mut R) -> Draft {
    let form = names::camel(r);
    let api = format!("/api/{}/{}", pick(r, &["v1", "v2"]), names::word(r));
    let minlen = r.random_range(6..13);
    let mut c = banner(r, &format!("Client-side validation for the #{form} form"));
    c.push_str(&fill(
        r#"(function () {
  var form = document.getElementById('@FORM@');
  if (!form) return;
  var EMAIL_RE = /^[^\s@]+@[^\s@]+\.[^\s@]+$/;

  function showError(input, message) {
    var el = input.parentNode.querySelector('.error');
    if (!el) {
      el = document.createElement('span');
      el.className = 'error';
      input.parentNode.appendChild(el);
    }
    el.textContent = message;
    input.setAttribute('aria-invalid', message ? 'true' : 'false');
  }

  function validate() {
    var ok = true;
    var email = form.elements.email;
    var pw = form.elements.password;
    if (!EMAIL_RE.test(email.value.trim())) { showError(email, 'Enter a valid e-mail address'); ok = false; } else { showError(email, ''); }
    if (pw.value.length < @MIN@) { showError(pw, 'Use at least @MIN@ characters'); ok = false; } else { showError(pw, ''); }
    return ok;
  }

  form.addEventListener('submit', function (ev) {
    ev.preventDefault();
    if (!validate()) return;
    var btn = form.querySelector('button[type=submit]');
    btn.disabled = true;
    fetch('@API@', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': document.querySelector('meta[name=csrf-token]').content },
      body: JSON.stringify({ email: form.elements.email.value, password: form.elements.password.value })
    }).then(function (res) {
      if (!res.ok) throw new Error('HTTP ' + res.status);
      window.location.assign('/welcome');
    }).catch(function (err) {
      showError(form.elements.email, 'Sign-up failed: ' + err.message);
    }).finally(function () { btn.disabled = false; });
  });
})();
"#,
        &[("FORM", &form), ("API", &api), ("MIN", &minlen.to_string())],
    ));
    Draft {
        content: c,
        purpose: format!("validates the #{form} sign-up form in the browser and submits it to {api}"),
        steps: vec![
            format!("looks up the form with document.getElementById('{form}') inside an immediately invoked function"),
            format!("checks the e-mail field against a regular expression and requires a password of at least {minlen} characters"),
            "shows inline messages in span.error elements and sets aria-invalid for accessibility".into(),
            format!("sends the data as JSON with fetch POST to the same-origin endpoint {api} with an X-CSRF-Token header and redirects to /welcome on success"),
        ],
        effects: vec!["The credentials go only to the site's own API over a same-origin request, protected by a CSRF token.".into()],
        behaviours: vec!["Validates and submits a web form".into()],
        iocs: vec![api, format!("'{form}'")],
    }
}

fn dashboard(r: &mut R) -> Draft {
    let host = format!("api.{}.com", names::company(r));
    let res = names::word(r);
    let secs = r.random_range(15..120);
    let el = format!("{res}-table");
    let mut c = banner(r, &format!("Live {res} dashboard widget"));
    c.push_str(&fill(
        r#"const API_BASE = 'https://@HOST@/v1';
const REFRESH_MS = @SECS@ * 1000;

async function loadRows() {
  const res = await fetch(`${API_BASE}/@RES@?limit=50`, { credentials: 'include' });
  if (!res.ok) {
    throw new Error(`failed to load @RES@: ${res.status}`);
  }
  return res.json();
}

function formatDate(iso) {
  return new Date(iso).toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' });
}

function render(rows) {
  const tbody = document.querySelector('#@EL@ tbody');
  tbody.replaceChildren();
  for (const row of rows) {
    const tr = document.createElement('tr');
    for (const value of [row.id, row.name, row.status, formatDate(row.updated_at)]) {
      const td = document.createElement('td');
      td.textContent = value;
      tr.appendChild(td);
    }
    tr.classList.toggle('is-stale', row.status !== 'active');
    tbody.appendChild(tr);
  }
  document.getElementById('@EL@-count').textContent = String(rows.length);
}

async function refresh() {
  try {
    render(await loadRows());
  } catch (err) {
    console.error(err);
    document.getElementById('@EL@-error').hidden = false;
  }
}

document.addEventListener('DOMContentLoaded', () => {
  refresh();
  setInterval(refresh, REFRESH_MS);
});
"#,
        &[
            ("HOST", &host),
            ("RES", res),
            ("SECS", &secs.to_string()),
            ("EL", &el),
        ],
    ));
    Draft {
        content: c,
        purpose: format!("renders a live table of {res} records fetched from https://{host}/v1"),
        steps: vec![
            format!("waits for DOMContentLoaded and calls fetch on {host}/v1/{res}?limit=50 with credentials included"),
            format!("builds table rows with document.createElement and textContent inside #{el}"),
            "formats timestamps with toLocaleString and marks inactive rows with the is-stale class".into(),
            format!("repeats the refresh every {secs} seconds with setInterval and reveals an error element on failure"),
        ],
        effects: vec!["It only reads from the company API and updates the page; using textContent keeps the rendering safe from markup injection.".into()],
        behaviours: vec!["Fetches and renders API data".into()],
        iocs: vec![host, format!("#{el}")],
    }
}

fn express_api(r: &mut R) -> Draft {
    let res = names::word(r);
    let port = pick(r, &[3000, 8080, 4000, 5000, 8000]);
    let db = names::db_name(r);
    let mut c = banner(r, &format!("REST API for {res} records"));
    c.push_str(&fill(
        r#"const express = require('express');
const { Pool } = require('pg');
const helmet = require('helmet');

const app = express();
const pool = new Pool({ connectionString: process.env.DATABASE_URL || 'postgres://localhost/@DB@' });
const PORT = Number(process.env.PORT || @PORT@);

app.use(helmet());
app.use(express.json({ limit: '100kb' }));

function requireApiKey(req, res, next) {
  if (req.get('x-api-key') !== process.env.API_KEY) {
    return res.status(401).json({ error: 'unauthorized' });
  }
  next();
}

app.get('/health', (req, res) => res.json({ status: 'ok' }));

app.get('/@RES@', requireApiKey, async (req, res, next) => {
  try {
    const limit = Math.min(Number(req.query.limit) || 20, 100);
    const { rows } = await pool.query('SELECT id, name, created_at FROM @RES@ ORDER BY id DESC LIMIT $1', [limit]);
    res.json(rows);
  } catch (err) {
    next(err);
  }
});

app.post('/@RES@', requireApiKey, async (req, res, next) => {
  try {
    const { name } = req.body;
    if (typeof name !== 'string' || !name.trim()) return res.status(400).json({ error: 'name required' });
    const { rows } = await pool.query('INSERT INTO @RES@ (name) VALUES ($1) RETURNING id', [name.trim()]);
    res.status(201).json({ id: rows[0].id });
  } catch (err) {
    next(err);
  }
});

app.use((err, req, res, next) => {
  console.error(err);
  res.status(500).json({ error: 'internal error' });
});

app.listen(PORT, () => console.log(`@RES@ api listening on ${PORT}`));
"#,
        &[("RES", res), ("PORT", &port.to_string()), ("DB", &db)],
    ));
    Draft {
        content: c,
        purpose: format!("serves a small Express REST API for {res} records backed by PostgreSQL"),
        steps: vec![
            format!("configures express with helmet, a 100kb JSON body limit and a pg Pool pointing at DATABASE_URL or postgres://localhost/{db}"),
            "defines a requireApiKey middleware that compares the x-api-key header with process.env.API_KEY".into(),
            format!("exposes /health, GET /{res} with a capped LIMIT and POST /{res} with parameterised INSERT queries"),
            format!("listens on process.env.PORT or {port} with a central error handler returning HTTP 500"),
        ],
        effects: vec!["Queries use placeholders, so user input never reaches SQL text directly.".into()],
        behaviours: vec!["Serves a web API".into()],
        iocs: vec![format!("/{res}"), port.to_string(), db],
    }
}

fn jest_tests(r: &mut R) -> Draft {
    let module = names::camel(r);
    let f1 = names::camel(r);
    let n = r.random_range(2..7);
    let mut c = banner(r, &format!("Unit tests for {module}"));
    c.push_str(&fill(
        "const { @F1@, parseAmount, formatCurrency } = require('../src/@MOD@');\n\nfunction makeOrder(overrides = {}) {\n  return { id: 1, currency: 'EUR', lines: [{ sku: 'A-1', qty: 2, price: 9.5 }], ...overrides };\n}\n\nbeforeEach(() => {\n  jest.useFakeTimers().setSystemTime(new Date('2024-01-15T10:00:00Z'));\n});\n\nafterEach(() => jest.useRealTimers());\n\ndescribe('parseAmount', () => {\n  test('parses decimal strings', () => {\n    expect(parseAmount('12.50')).toBe(12.5);\n  });\n  test('rejects garbage', () => {\n    expect(() => parseAmount('abc')).toThrow(/invalid amount/);\n  });\n});\n\n",
        &[("F1", &f1), ("MOD", &module)],
    ));
    for i in 0..n {
        c.push_str(&format!(
            "test('{f1} handles case {i}', () => {{\n  const order = makeOrder({{ id: {}, lines: [{{ sku: 'B-{i}', qty: {}, price: {}.25 }}] }});\n  expect({f1}(order)).toMatchSnapshot();\n  expect(formatCurrency(order.lines[0].price, 'EUR')).toContain('{}');\n}});\n\n",
            i + 2,
            r.random_range(1..9),
            r.random_range(1..99),
            pick(r, &["EUR", "€", ".25", ",25"])
        ));
    }
    Draft {
        content: c,
        purpose: format!("contains Jest unit tests for the {module} module"),
        steps: vec![
            format!("imports {f1}, parseAmount and formatCurrency from ../src/{module}"),
            "defines a makeOrder factory and freezes time with jest.useFakeTimers before each test"
                .into(),
            format!(
                "checks parseAmount on valid and invalid input and runs {n} snapshot tests of {f1}"
            ),
        ],
        effects: vec![
            "Running it only exercises the module under test; no files or network are involved."
                .into(),
        ],
        behaviours: vec!["Unit tests".into()],
        iocs: vec![format!("../src/{module}"), "jest.useFakeTimers".into()],
    }
}

fn csv_etl(r: &mut R) -> Draft {
    let input = format!("/data/exports/{}.csv", names::word(r));
    let out = format!("/data/warehouse/{}.jsonl", names::word(r));
    let mut c = banner(r, "Transform the nightly CSV export into JSON lines");
    c.push_str(&fill(
        r#"const fs = require('fs');
const readline = require('readline');
const path = require('path');

const [input = '@IN@', output = '@OUT@'] = process.argv.slice(2);

function parseLine(line) {
  const out = [];
  let cur = '';
  let quoted = false;
  for (const ch of line) {
    if (ch === '"') quoted = !quoted;
    else if (ch === ',' && !quoted) { out.push(cur); cur = ''; }
    else cur += ch;
  }
  out.push(cur);
  return out;
}

async function main() {
  const rl = readline.createInterface({ input: fs.createReadStream(input), crlfDelay: Infinity });
  const sink = fs.createWriteStream(output + '.tmp');
  let header = null;
  let count = 0;
  let skipped = 0;
  for await (const line of rl) {
    if (!header) { header = parseLine(line).map((h) => h.trim().toLowerCase()); continue; }
    const cells = parseLine(line);
    if (cells.length !== header.length) { skipped++; continue; }
    const rec = Object.fromEntries(header.map((h, i) => [h, cells[i]]));
    rec.amount = Number(rec.amount || 0);
    rec.loaded_at = new Date().toISOString();
    sink.write(JSON.stringify(rec) + '\n');
    count++;
  }
  sink.end();
  await new Promise((res) => sink.on('finish', res));
  fs.renameSync(output + '.tmp', output);
  console.log(`${path.basename(input)}: ${count} records written, ${skipped} skipped`);
}

main().catch((err) => { console.error(err); process.exit(1); });
"#,
        &[("IN", &input), ("OUT", &out)],
    ));
    Draft {
        content: c,
        purpose: format!("converts the CSV export {input} into JSON lines at {out}"),
        steps: vec![
            "takes input and output paths from process.argv with defaults".into(),
            "reads the CSV line by line with readline and a small quote-aware parser".into(),
            "skips rows whose column count differs from the header and converts the amount column to a number".into(),
            format!("writes each record as JSON to a .tmp file and renames it atomically to {out}"),
        ],
        effects: vec!["It reads one file and writes one file; nothing else on the system changes.".into()],
        behaviours: vec!["Transforms data files".into()],
        iocs: vec![input, out],
    }
}

fn service_worker(r: &mut R) -> Draft {
    let ver = r.random_range(1..40);
    let cache = format!("{}-static-v{ver}", names::product(r));
    let mut c = banner(r, "Service worker: offline cache for static assets");
    c.push_str(&fill(
        r#"const CACHE = '@CACHE@';
const ASSETS = ['/', '/index.html', '/css/app.css', '/js/app.js', '/img/logo.svg', '/offline.html'];

self.addEventListener('install', (event) => {
  event.waitUntil(caches.open(CACHE).then((c) => c.addAll(ASSETS)));
  self.skipWaiting();
});

self.addEventListener('activate', (event) => {
  event.waitUntil(
    caches.keys().then((keys) => Promise.all(keys.filter((k) => k !== CACHE).map((k) => caches.delete(k))))
  );
  self.clients.claim();
});

self.addEventListener('fetch', (event) => {
  if (event.request.method !== 'GET') return;
  event.respondWith(
    caches.match(event.request).then((hit) =>
      hit || fetch(event.request).catch(() => caches.match('/offline.html'))
    )
  );
});
"#,
        &[("CACHE", &cache)],
    ));
    Draft {
        content: c,
        purpose: format!("implements a service worker that caches the site's static assets under the cache name {cache}"),
        steps: vec![
            "pre-caches index.html, app.css, app.js, the logo and offline.html in the install event".into(),
            "deletes caches with other names in the activate event and claims open clients".into(),
            "answers GET requests from the cache first, falling back to the network and then to /offline.html".into(),
        ],
        effects: vec!["Its only state is the browser's Cache Storage for this origin.".into()],
        behaviours: vec!["Caches web assets".into()],
        iocs: vec![cache, "/offline.html".into()],
    }
}
