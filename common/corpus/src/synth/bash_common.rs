//! Bash scaffolding shared by benign and attacker families: headers, logging,
//! argument parsing and small helper functions.

use rand::Rng;

use super::names::{self, pick, R};

pub(crate) fn header(r: &mut R, what: &str, strict: bool) -> String {
    let mut s = String::from(pick(r, &["#!/bin/bash\n", "#!/usr/bin/env bash\n"]));
    if r.random_bool(0.7) {
        s.push_str(&format!("#\n# {what}\n#\n"));
        if r.random_bool(0.5) {
            s.push_str(&format!(
                "# Maintainer: {}@{}.com\n",
                names::user(r),
                names::company(r)
            ));
        }
    }
    if strict {
        s.push_str(pick(
            r,
            &[
                "set -euo pipefail\n",
                "set -eu\n",
                "set -o errexit -o nounset -o pipefail\n",
            ],
        ));
    }
    s.push('\n');
    s
}

/// A logging helper; returns its code and the function name.
pub(crate) fn logger(r: &mut R) -> (String, &'static str) {
    let name = pick(r, &["log", "msg", "info", "say"]);
    let body = match r.random_range(0..3) {
        0 => format!("{name}() {{\n    printf '%s [%s] %s\\n' \"$(date '+%F %T')\" \"${{2:+$1}}\" \"${{2:-$1}}\" >&2\n}}\n\n"),
        1 => format!("{name}() {{ echo \"[$(date +%H:%M:%S)] $*\"; }}\n\n"),
        _ => format!("{name}() {{\n    local ts\n    ts=$(date -u +%Y-%m-%dT%H:%M:%SZ)\n    echo \"$ts $*\" | tee -a \"${{LOG_FILE:-/dev/null}}\" >&2\n}}\n\n"),
    };
    (body, name)
}

/// Argument parsing for `(flag, VAR, default)` options.
pub(crate) fn args(r: &mut R, opts: &[(&str, &str, &str)]) -> String {
    let mut s = String::new();
    for (_, var, def) in opts {
        s.push_str(&format!("{var}=\"${{{var}:-{def}}}\"\n"));
    }
    s.push_str("\nusage() {\n    echo \"Usage: $0");
    for (f, var, _) in opts {
        s.push_str(&format!(" [--{f} {var}]"));
    }
    s.push_str("\"\n    exit 1\n}\n\n");
    if r.random_bool(0.8) {
        s.push_str("while [[ $# -gt 0 ]]; do\n    case \"$1\" in\n");
        for (f, var, _) in opts {
            s.push_str(&format!("        --{f}) {var}=\"$2\"; shift 2 ;;\n"));
        }
        s.push_str("        -h|--help) usage ;;\n        *) echo \"unknown option: $1\" >&2; usage ;;\n    esac\ndone\n\n");
    }
    s
}

const HELPERS: &[&str] = &[
    "require_cmd() {\n    command -v \"$1\" >/dev/null 2>&1 || { echo \"missing dependency: $1\" >&2; exit 127; }\n}\n\n",
    "retry() {\n    local n=0 max=${RETRIES:-3}\n    until \"$@\"; do\n        n=$((n + 1))\n        [ \"$n\" -ge \"$max\" ] && return 1\n        sleep $((n * 2))\n    done\n}\n\n",
    "cleanup() {\n    rm -rf \"${WORK_DIR:-/tmp/nonexistent}\"\n}\ntrap cleanup EXIT\n\n",
    "die() {\n    echo \"error: $*\" >&2\n    exit 1\n}\n\n",
    "human_size() {\n    numfmt --to=iec --suffix=B \"$1\" 2>/dev/null || echo \"${1}B\"\n}\n\n",
    "lock_or_exit() {\n    exec 9>\"/var/lock/$(basename \"$0\").lock\"\n    flock -n 9 || { echo \"another instance is running\" >&2; exit 0; }\n}\n\n",
    "is_root() {\n    [ \"$(id -u)\" -eq 0 ]\n}\n\n",
];

pub(crate) fn helpers(r: &mut R, max: usize) -> String {
    let n = r.random_range(0..=max.min(HELPERS.len()));
    let start = r.random_range(0..HELPERS.len());
    (0..n)
        .map(|i| HELPERS[(start + i) % HELPERS.len()])
        .collect()
}
