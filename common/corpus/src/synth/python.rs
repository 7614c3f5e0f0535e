//! Python: benign families.

use rand::Rng;

use super::names::{self, fill, pick, R};
use super::{Draft, Family};

pub(crate) const FAMILIES: &[Family] = &[
    Family {
        name: "etl-pipeline",
        description: "A data pipeline that extracts, cleans and loads records into a database",
        gen: etl,
    },
    Family {
        name: "flask-app",
        description: "A small Flask web application",
        gen: flask_app,
    },
    Family {
        name: "log-analyzer",
        description: "A log analysis tool that summarises web server access logs",
        gen: log_analyzer,
    },
    Family {
        name: "db-migration",
        description: "A database schema migration runner",
        gen: db_migration,
    },
    Family {
        name: "unittest-helpers",
        description: "Unit tests with fixtures and helper functions",
        gen: unit_tests,
    },
    Family {
        name: "api-client-cli",
        description: "A command-line client for an internal REST API",
        gen: api_client,
    },
];

pub(crate) fn doc(r: &mut R, what: &str) -> String {
    let mut s = String::new();
    if r.random_bool(0.5) {
        s.push_str("#!/usr/bin/env python3\n");
    }
    if r.random_bool(0.7) {
        s.push_str(&format!("\"\"\"{what}.\"\"\"\n\n"));
    }
    s
}

fn etl(r: &mut R) -> Draft {
    let src = format!("/data/incoming/{}", names::word(r));
    let table = format!(
        "{}_{}",
        names::word(r),
        pick(r, &["facts", "events", "daily", "raw"])
    );
    let dsn_host = names::internal_host(r);
    let db = names::db_name(r);
    let batch = pick(r, &[500, 1000, 5000]);
    let mut c = doc(r, &format!("Load CSV drops from {src} into {table}"));
    c.push_str(&fill(
        r#"import argparse
import csv
import logging
from datetime import datetime
from pathlib import Path

import psycopg2
from psycopg2.extras import execute_values

log = logging.getLogger("etl")
BATCH = @BATCH@


def clean(row):
    row = {k.strip().lower(): (v or "").strip() for k, v in row.items()}
    row["amount"] = float(row.get("amount") or 0)
    row["event_date"] = datetime.strptime(row["date"], "%Y-%m-%d").date()
    return row


def extract(path):
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            try:
                yield clean(row)
            except (KeyError, ValueError) as exc:
                log.warning("skipping bad row in %s: %s", path.name, exc)


def load(conn, rows):
    with conn.cursor() as cur:
        execute_values(
            cur,
            "INSERT INTO @TABLE@ (customer_id, amount, event_date) VALUES %s ON CONFLICT DO NOTHING",
            [(r["customer_id"], r["amount"], r["event_date"]) for r in rows],
        )
    conn.commit()


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", default="@SRC@")
    parser.add_argument("--dsn", default="host=@HOST@ dbname=@DB@ user=etl")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    conn = psycopg2.connect(args.dsn)
    for path in sorted(Path(args.source).glob("*.csv")):
        buf = []
        for row in extract(path):
            buf.append(row)
            if len(buf) >= BATCH:
                load(conn, buf)
                buf.clear()
        if buf:
            load(conn, buf)
        path.rename(path.with_suffix(".done"))
        log.info("loaded %s", path.name)
    conn.close()


if __name__ == "__main__":
    main()
"#,
        &[("BATCH", &batch.to_string()), ("TABLE", &table), ("SRC", &src), ("HOST", &dsn_host), ("DB", &db)],
    ));
    Draft {
        content: c,
        purpose: format!("loads CSV files from {src} into the PostgreSQL table {table}"),
        steps: vec![
            format!("parses --source and --dsn with argparse, defaulting to {src} and the database {db} on {dsn_host}"),
            "reads every .csv file with csv.DictReader and normalises keys, amounts and dates, logging and skipping bad rows".into(),
            format!("inserts rows in batches of {batch} with psycopg2 execute_values and ON CONFLICT DO NOTHING"),
            "renames each processed file to .done".into(),
        ],
        effects: vec![format!("New rows appear in {table} and processed input files are marked so they are not loaded twice.")],
        behaviours: vec!["Loads data into a database".into()],
        iocs: vec![src, table, dsn_host],
    }
}

fn flask_app(r: &mut R) -> Draft {
    let res = names::word(r);
    let port = pick(r, &[5000, 8000, 8080]);
    let mut c = doc(r, &format!("Minimal {res} service"));
    c.push_str(&fill(
        r#"import os
import sqlite3
from functools import wraps

from flask import Flask, abort, g, jsonify, request

app = Flask(__name__)
DB_PATH = os.environ.get("DB_PATH", "@RES@.sqlite3")


def get_db():
    if "db" not in g:
        g.db = sqlite3.connect(DB_PATH)
        g.db.row_factory = sqlite3.Row
    return g.db


@app.teardown_appcontext
def close_db(exc):
    db = g.pop("db", None)
    if db is not None:
        db.close()


def require_token(fn):
    @wraps(fn)
    def wrapper(*args, **kwargs):
        if request.headers.get("Authorization") != "Bearer " + os.environ["API_TOKEN"]:
            abort(401)
        return fn(*args, **kwargs)
    return wrapper


@app.get("/@RES@")
def list_items():
    rows = get_db().execute("SELECT id, title FROM @RES@ ORDER BY id").fetchall()
    return jsonify([dict(r) for r in rows])


@app.post("/@RES@")
@require_token
def create_item():
    title = (request.get_json(silent=True) or {}).get("title", "").strip()
    if not title:
        abort(400)
    cur = get_db().execute("INSERT INTO @RES@ (title) VALUES (?)", (title,))
    get_db().commit()
    return jsonify({"id": cur.lastrowid}), 201


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=@PORT@)
"#,
        &[("RES", res), ("PORT", &port.to_string())],
    ));
    Draft {
        content: c,
        purpose: format!("implements a small Flask API for {res} items stored in SQLite"),
        steps: vec![
            format!("opens the SQLite database from DB_PATH, default {res}.sqlite3, once per request and closes it in teardown_appcontext"),
            "protects write routes with a require_token decorator that compares a Bearer token with API_TOKEN".into(),
            format!("serves GET /{res} as JSON and inserts new items on POST /{res} with a parameterised query"),
            format!("binds the development server to 127.0.0.1 on port {port}"),
        ],
        effects: vec!["It stores data only in its local SQLite file and listens on the loopback interface.".into()],
        behaviours: vec!["Serves a web API".into()],
        iocs: vec![format!("/{res}"), format!("{res}.sqlite3")],
    }
}

fn log_analyzer(r: &mut R) -> Draft {
    let logf = pick(
        r,
        &[
            "/var/log/nginx/access.log",
            "/var/log/apache2/access.log",
            "/var/log/httpd/access_log",
        ],
    );
    let top = r.random_range(5..30);
    let mut c = doc(r, "Summarise a combined-format access log");
    c.push_str(&fill(
        r#"import argparse
import gzip
import re
import sys
from collections import Counter

LINE = re.compile(r'(?P<ip>\S+) \S+ \S+ \[(?P<ts>[^\]]+)\] "(?P<method>\S+) (?P<path>\S+) [^"]*" (?P<status>\d{3}) (?P<size>\d+|-)')


def open_log(path):
    return gzip.open(path, "rt") if path.endswith(".gz") else open(path, encoding="utf-8", errors="replace")


def analyse(paths):
    ips, paths_c, statuses = Counter(), Counter(), Counter()
    total_bytes = 0
    for p in paths:
        with open_log(p) as fh:
            for line in fh:
                m = LINE.match(line)
                if not m:
                    continue
                ips[m["ip"]] += 1
                paths_c[m["path"].split("?")[0]] += 1
                statuses[m["status"]] += 1
                if m["size"] != "-":
                    total_bytes += int(m["size"])
    return ips, paths_c, statuses, total_bytes


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("logs", nargs="*", default=["@LOG@"])
    ap.add_argument("--top", type=int, default=@TOP@)
    args = ap.parse_args(argv)
    ips, paths, statuses, size = analyse(args.logs)
    print(f"requests: {sum(statuses.values())}  bytes: {size}")
    print("status codes:", dict(sorted(statuses.items())))
    for title, counter in (("top clients", ips), ("top paths", paths)):
        print(f"\n{title}:")
        for key, n in counter.most_common(args.top):
            print(f"  {n:8d}  {key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
"#,
        &[("LOG", logf), ("TOP", &top.to_string())],
    ));
    Draft {
        content: c,
        purpose: format!("summarises web server traffic from {logf}"),
        steps: vec![
            format!("takes log paths and --top from argparse, defaulting to {logf} and {top}"),
            "opens plain or gzip-compressed logs and matches each line against a combined log format regular expression".into(),
            "counts requests per client IP, per path and per status code with collections.Counter and sums response bytes".into(),
            "prints the totals and the most common clients and paths".into(),
        ],
        effects: vec!["The tool only reads log files and prints a report to standard output.".into()],
        behaviours: vec!["Analyses log files".into()],
        iocs: vec![logf.to_string(), "gzip.open".into()],
    }
}

fn db_migration(r: &mut R) -> Draft {
    let db = names::db_name(r);
    let dir = pick(r, &["migrations", "db/migrations", "sql/migrations"]);
    let mut c = doc(r, "Apply pending SQL migrations in order");
    c.push_str(&fill(
        r#"import hashlib
import logging
import os
import sys
from pathlib import Path

import psycopg2

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
MIGRATIONS = Path(__file__).resolve().parent / "@DIR@"
DSN = os.environ.get("DATABASE_URL", "postgresql://migrator@localhost/@DB@")


def ensure_table(cur):
    cur.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version TEXT PRIMARY KEY, checksum TEXT NOT NULL, applied_at TIMESTAMPTZ DEFAULT now())"
    )


def applied(cur):
    cur.execute("SELECT version, checksum FROM schema_migrations")
    return dict(cur.fetchall())


def main():
    conn = psycopg2.connect(DSN)
    conn.autocommit = False
    with conn, conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(4242)")
        ensure_table(cur)
        done = applied(cur)
        for path in sorted(MIGRATIONS.glob("*.sql")):
            sql = path.read_text()
            digest = hashlib.sha256(sql.encode()).hexdigest()
            if path.stem in done:
                if done[path.stem] != digest:
                    logging.error("migration %s was edited after being applied", path.name)
                    return 1
                continue
            logging.info("applying %s", path.name)
            cur.execute(sql)
            cur.execute("INSERT INTO schema_migrations (version, checksum) VALUES (%s, %s)", (path.stem, digest))
    logging.info("database is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
"#,
        &[("DIR", dir), ("DB", &db)],
    ));
    Draft {
        content: c,
        purpose: format!("applies pending SQL migrations from the {dir} folder to the {db} database"),
        steps: vec![
            format!("connects with DATABASE_URL or postgresql://migrator@localhost/{db} and takes a transaction-scoped pg_advisory_xact_lock"),
            "creates the schema_migrations table when missing and loads already applied versions with their checksums".into(),
            "refuses to continue when an applied migration file changed, comparing SHA-256 digests".into(),
            "executes each new .sql file in name order and records it, all inside one transaction".into(),
        ],
        effects: vec!["The schema changes only through the reviewed migration files, and a failure rolls everything back.".into()],
        behaviours: vec!["Migrates a database schema".into()],
        iocs: vec![db, "schema_migrations".into()],
    }
}

fn unit_tests(r: &mut R) -> Draft {
    let module = names::snake(r);
    let func = names::snake(r);
    let n = r.random_range(2..8);
    let mut c = doc(r, &format!("Tests for {module}"));
    c.push_str(&fill(
        "import json\nimport tempfile\nimport unittest\nfrom pathlib import Path\nfrom unittest import mock\n\nfrom app import @MOD@\n\n\ndef make_record(**overrides):\n    base = {\"id\": 1, \"name\": \"alpha\", \"tags\": [\"x\"]}\n    base.update(overrides)\n    return base\n\n\nclass @CLS@Test(unittest.TestCase):\n    def setUp(self):\n        self.tmp = tempfile.TemporaryDirectory()\n        self.path = Path(self.tmp.name) / \"data.json\"\n        self.path.write_text(json.dumps([make_record()]))\n\n    def tearDown(self):\n        self.tmp.cleanup()\n\n    @mock.patch(\"app.@MOD@.requests.get\")\n    def test_remote_failure_is_reported(self, get):\n        get.side_effect = TimeoutError\n        with self.assertRaises(@MOD@.FetchError):\n            @MOD@.@FUNC@(self.path, remote=True)\n\n",
        &[("MOD", &module), ("FUNC", &func), ("CLS", &names::pascal(&module.replace('_', "")))],
    ));
    for i in 0..n {
        c.push_str(&format!(
            "    def test_{func}_case_{i}(self):\n        rec = make_record(id={}, name=\"{}\")\n        self.assertEqual({module}.{func}([rec])[0][\"id\"], {})\n\n",
            i + 2,
            names::word(r),
            i + 2
        ));
    }
    c.push_str("\nif __name__ == \"__main__\":\n    unittest.main()\n");
    Draft {
        content: c,
        purpose: format!("holds unittest test cases for the {module} module"),
        steps: vec![
            "defines a make_record helper and creates a temporary data.json fixture in setUp with tempfile.TemporaryDirectory".into(),
            format!("patches app.{module}.requests.get with mock.patch to simulate a timeout"),
            format!("runs {n} table-style assertions against {func}"),
        ],
        effects: vec!["Temporary files are cleaned up in tearDown, and no real network calls happen.".into()],
        behaviours: vec!["Unit tests".into()],
        iocs: vec![format!("app.{module}"), "mock.patch".into()],
    }
}

fn api_client(r: &mut R) -> Draft {
    let host = format!("https://{}", names::internal_host(r));
    let res = names::word(r);
    let mut c = doc(r, &format!("Command-line client for the {res} API"));
    c.push_str(&fill(
        r#"import argparse
import json
import os
import sys

import requests

BASE = os.environ.get("API_BASE", "@HOST@/api/v1")


def session():
    s = requests.Session()
    token = os.environ.get("API_TOKEN")
    if not token:
        sys.exit("API_TOKEN is not set")
    s.headers.update({"Authorization": f"Bearer {token}", "Accept": "application/json"})
    return s


def cmd_list(s, args):
    resp = s.get(f"{BASE}/@RES@", params={"page": args.page}, timeout=15)
    resp.raise_for_status()
    for item in resp.json()["items"]:
        print(f"{item['id']:>6}  {item['name']}")


def cmd_show(s, args):
    resp = s.get(f"{BASE}/@RES@/{args.id}", timeout=15)
    resp.raise_for_status()
    print(json.dumps(resp.json(), indent=2))


def main():
    ap = argparse.ArgumentParser(prog="@RES@ctl")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("list")
    p.add_argument("--page", type=int, default=1)
    p.set_defaults(fn=cmd_list)
    p = sub.add_parser("show")
    p.add_argument("id")
    p.set_defaults(fn=cmd_show)
    args = ap.parse_args()
    try:
        args.fn(session(), args)
    except requests.HTTPError as exc:
        sys.exit(f"request failed: {exc}")


if __name__ == "__main__":
    main()
"#,
        &[("HOST", &host), ("RES", res)],
    ));
    Draft {
        content: c,
        purpose: format!("provides a command-line client for the internal {res} REST API at {host}"),
        steps: vec![
            "defines list and show subcommands with argparse subparsers".into(),
            "builds a requests.Session carrying a Bearer token from the API_TOKEN environment variable".into(),
            format!("calls GET {host}/api/v1/{res} with paging or fetches one item by id with a 15-second timeout"),
            "prints a table or indented JSON and exits with a message on HTTP errors".into(),
        ],
        effects: vec!["It only reads from the API using the operator's own token.".into()],
        behaviours: vec!["Queries a REST API".into()],
        iocs: vec![host, "API_TOKEN".into()],
    }
}
