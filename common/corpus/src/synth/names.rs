//! Random but plausible names: hosts, IPs, ports, paths, users, identifiers, products.
//! Every value is drawn from the per-script RNG so the corpus stays deterministic.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

pub(crate) type R = ChaCha8Rng;

/// Uniform choice from a non-empty constant list.
pub(crate) fn pick<T: Copy>(r: &mut R, xs: &[T]) -> T {
    xs[r.random_range(0..xs.len())]
}

/// Replace every `@KEY@` placeholder in a template (avoids brace escaping in format!).
pub(crate) fn fill(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out = template.to_string();
    for (k, v) in vars {
        out = out.replace(&format!("@{k}@"), v);
    }
    out
}

const WORDS: &[&str] = &[
    "cache", "sync", "data", "report", "backup", "queue", "stage", "metric", "audit", "index",
    "export", "batch", "ledger", "asset", "order", "invoice", "session", "token", "upload",
    "media", "profile", "config", "tenant", "shard", "worker", "job", "feed", "archive", "catalog",
    "event",
];

const VERBS: &[&str] = &[
    "load", "check", "build", "parse", "sync", "collect", "render", "fetch", "update", "prepare",
    "clean", "verify", "apply", "resolve", "write", "scan", "merge", "push", "init", "run",
];

pub(crate) fn word(r: &mut R) -> &'static str {
    pick(r, WORDS)
}

/// snake_case identifier such as `sync_ledger`.
pub(crate) fn snake(r: &mut R) -> String {
    format!("{}_{}", pick(r, VERBS), pick(r, WORDS))
}

/// camelCase identifier such as `fetchInvoice`.
pub(crate) fn camel(r: &mut R) -> String {
    let w = pick(r, WORDS);
    let mut c = w.chars();
    let cap: String = match c.next() {
        Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
        None => String::new(),
    };
    format!("{}{}", pick(r, VERBS), cap)
}

pub(crate) fn pascal(w: &str) -> String {
    let mut c = w.chars();
    match c.next() {
        Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
        None => String::new(),
    }
}

/// Short random-looking token of lowercase letters and digits.
pub(crate) fn token(r: &mut R, len: usize) -> String {
    const A: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..len)
        .map(|_| A[r.random_range(0..A.len())] as char)
        .collect()
}

pub(crate) fn company(r: &mut R) -> &'static str {
    pick(
        r,
        &[
            "acme",
            "northwind",
            "contoso",
            "globex",
            "initech",
            "umbrella",
            "fabrikam",
            "tailspin",
            "wingtip",
            "litware",
            "adatum",
            "proseware",
            "vandelay",
            "hooli",
            "stark",
            "wayne",
        ],
    )
}

pub(crate) fn product(r: &mut R) -> &'static str {
    pick(
        r,
        &[
            "fluxctl",
            "datapipe",
            "kestrel",
            "orbitd",
            "tracelog",
            "quarry",
            "beacon-agent",
            "nimbus",
            "harbor-cli",
            "ledgerd",
            "pulse",
            "skiff",
            "cobalt",
            "mosaic",
            "relay",
            "sextant",
        ],
    )
}

/// A legitimate-looking vendor or corporate host.
pub(crate) fn vendor_host(r: &mut R) -> String {
    let sub = pick(
        r,
        &[
            "get", "pkg", "releases", "download", "repo", "dl", "packages", "cdn",
        ],
    );
    let tld = pick(r, &["com", "io", "dev", "net", "org"]);
    format!("{sub}.{}.{tld}", company(r))
}

pub(crate) fn internal_host(r: &mut R) -> String {
    let role = pick(
        r,
        &[
            "db", "api", "web", "build", "mon", "nas", "git", "ci", "files", "app",
        ],
    );
    let dom = pick(
        r,
        &[
            "corp.local",
            "internal",
            "lan",
            "prod.example.net",
            "ad.example.org",
        ],
    );
    format!("{role}{:02}.{dom}", r.random_range(1..40))
}

/// Attacker-controlled domain.
pub(crate) fn c2_domain(r: &mut R) -> String {
    let a = pick(
        r,
        &[
            "cdn",
            "update",
            "sync",
            "msft",
            "win",
            "cloud",
            "secure",
            "api",
            "static",
            "telemetry",
            "files",
            "driver",
            "office",
            "edge",
            "chrome",
        ],
    );
    let b = pick(
        r,
        &[
            "service", "check", "data", "host", "center", "store", "patch", "node", "gate", "box",
            "portal", "link",
        ],
    );
    let tld = pick(
        r,
        &[
            "top", "xyz", "ru", "info", "biz", "online", "su", "cc", "site", "pw",
        ],
    );
    match r.random_range(0..3) {
        0 => format!("{a}-{b}.{tld}"),
        1 => format!("{a}{b}{}.{tld}", r.random_range(1..99)),
        _ => format!("{}.{a}-{b}.{tld}", token(r, 5)),
    }
}

/// Public-looking IPv4 address in ranges commonly seen in abuse reports.
pub(crate) fn c2_ip(r: &mut R) -> String {
    let first = pick(
        r,
        &[
            45, 91, 103, 141, 146, 185, 193, 194, 212, 5, 31, 37, 77, 89, 176,
        ],
    );
    format!(
        "{first}.{}.{}.{}",
        r.random_range(0..256),
        r.random_range(0..256),
        r.random_range(1..255)
    )
}

/// Either a domain or an IP for a C2 endpoint.
pub(crate) fn c2_host(r: &mut R) -> String {
    if r.random_bool(0.5) {
        c2_ip(r)
    } else {
        c2_domain(r)
    }
}

pub(crate) fn c2_port(r: &mut R) -> u16 {
    if r.random_bool(0.6) {
        pick(
            r,
            &[
                4444, 443, 8080, 1337, 9001, 53, 8443, 5555, 6666, 31337, 7777, 2222,
            ],
        )
    } else {
        r.random_range(1025..65000)
    }
}

pub(crate) fn private_ip(r: &mut R) -> String {
    match r.random_range(0..3) {
        0 => format!(
            "10.{}.{}.{}",
            r.random_range(0..256),
            r.random_range(0..256),
            r.random_range(2..254)
        ),
        1 => format!(
            "192.168.{}.{}",
            r.random_range(0..256),
            r.random_range(2..254)
        ),
        _ => format!(
            "172.{}.{}.{}",
            r.random_range(16..32),
            r.random_range(0..256),
            r.random_range(2..254)
        ),
    }
}

pub(crate) fn user(r: &mut R) -> &'static str {
    pick(
        r,
        &[
            "jsmith",
            "adavis",
            "mgarcia",
            "klee",
            "twilson",
            "deploy",
            "svc_backup",
            "rnguyen",
            "pmartin",
            "ejohnson",
            "build",
            "ops",
            "lchen",
            "obrien",
            "hkumar",
            "svc_sql",
        ],
    )
}

/// Payload file name that tries to look like a system component.
pub(crate) fn stealth_name(r: &mut R) -> &'static str {
    pick(
        r,
        &[
            "svchost",
            "dllhost",
            "winupdate",
            "msupdate",
            "runtimebroker",
            "taskhostw",
            "kworker",
            "systemd-helper",
            "dbus-daemon",
            "crond",
            "udevd",
            "sysupdate",
            "chrome_update",
            "onedrive_sync",
            "spoolsv",
            "audiodg",
        ],
    )
}

pub(crate) fn linux_drop_dir(r: &mut R) -> &'static str {
    pick(
        r,
        &[
            "/tmp",
            "/dev/shm",
            "/var/tmp",
            "/tmp/.X11-unix",
            "/usr/local/lib/.cache",
            "/var/lib/.sys",
        ],
    )
}

pub(crate) fn win_drop_dir(r: &mut R) -> &'static str {
    pick(
        r,
        &[
            "%APPDATA%\\Microsoft",
            "%TEMP%",
            "%PROGRAMDATA%\\Updates",
            "%LOCALAPPDATA%\\Temp",
            "%PUBLIC%\\Libraries",
            "%APPDATA%\\Sync",
        ],
    )
}

pub(crate) fn ps_drop_dir(r: &mut R) -> &'static str {
    pick(
        r,
        &[
            "$env:APPDATA\\Microsoft",
            "$env:TEMP",
            "$env:ProgramData\\Updates",
            "$env:LOCALAPPDATA\\Temp",
            "$env:PUBLIC\\Libraries",
        ],
    )
}

pub(crate) fn app_dir(r: &mut R) -> String {
    let base = pick(
        r,
        &["/opt", "/srv", "/var/lib", "/home/deploy", "/usr/local"],
    );
    format!("{base}/{}", product(r))
}

pub(crate) fn db_name(r: &mut R) -> String {
    format!(
        "{}_{}",
        company(r),
        pick(r, &["prod", "app", "crm", "billing", "analytics", "hr"])
    )
}

pub(crate) fn version(r: &mut R) -> String {
    format!(
        "{}.{}.{}",
        r.random_range(0..6),
        r.random_range(0..30),
        r.random_range(0..20)
    )
}

pub(crate) fn wallet(r: &mut R) -> String {
    const A: &[u8] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
    let body: String = (0..93)
        .map(|_| A[r.random_range(0..A.len())] as char)
        .collect();
    format!("4{body}")
}

pub(crate) fn url_path(r: &mut R) -> String {
    let dir = pick(
        r,
        &[
            "static",
            "files",
            "dl",
            "update",
            "cdn",
            "assets",
            "img",
            "wp-content/uploads",
        ],
    );
    format!("/{dir}/{}", token(r, 6))
}

/// ATT&CK behaviour for the C2 port: T1571 for unusual ports, T1071.001 for web ports.
pub(crate) fn port_behaviour(port: u16) -> String {
    match port {
        80 | 443 | 8080 | 8443 => "Uses a web port for command and control (T1071.001)".to_string(),
        53 => "Uses the DNS port for command and control (T1571)".to_string(),
        _ => "Uses a non-standard port for C2 (T1571)".to_string(),
    }
}
