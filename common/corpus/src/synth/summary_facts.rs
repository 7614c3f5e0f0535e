//! Facts a summary draws from the code itself: defined functions, structure, tools,
//! runtime and ATT&CK ids.

use rand::Rng;

use super::names::{pick, R};
use automaldesc_common::types::Language;

/// Names of the functions (or batch subroutines) defined in `code`.
pub(crate) fn functions(l: Language, code: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in code.lines() {
        let t = line.trim_start();
        let name = match l {
            Language::Bash => t
                .strip_prefix("function ")
                .map(|s| s.split([' ', '(', '{']).next().unwrap_or(""))
                .or_else(|| t.strip_suffix("() {").filter(|s| !s.contains(' '))),
            Language::Batch => t
                .strip_prefix(':')
                .filter(|s| !s.starts_with(':') && !s.is_empty() && !s.contains(' '))
                .filter(|s| !s.eq_ignore_ascii_case("eof")),
            Language::Javascript => t
                .strip_prefix("async function ")
                .or_else(|| t.strip_prefix("function "))
                .and_then(|s| s.split('(').next()),
            Language::Powershell => t
                .strip_prefix("function ")
                .and_then(|s| s.split([' ', '{', '(']).next()),
            Language::Python => t
                .strip_prefix("async def ")
                .or_else(|| t.strip_prefix("def "))
                .and_then(|s| s.split('(').next()),
        };
        if let Some(n) = name {
            let n = n.trim();
            if !n.is_empty() && !out.iter().any(|o: &String| o == n) {
                out.push(if l == Language::Batch {
                    format!(":{n}")
                } else {
                    n.to_string()
                });
            }
        }
    }
    out
}

pub(crate) fn list(items: &[String]) -> String {
    match items.len() {
        0 => String::new(),
        1 => items[0].clone(),
        n => format!("{} and {}", items[..n - 1].join(", "), items[n - 1]),
    }
}

pub(crate) fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_ascii_lowercase().to_string() + c.as_str(),
        None => String::new(),
    }
}

pub(crate) fn structure(r: &mut R, l: Language, code: &str) -> (String, Vec<String>) {
    let fns = functions(l, code);
    let (plural, single) = if l == Language::Batch {
        ("subroutines", "subroutine")
    } else {
        ("functions", "function")
    };
    let shown: Vec<String> = fns.iter().take(4).cloned().collect();
    let main = match fns.len() {
        0 => pick(
            r,
            &[
                "There are no PL here; the statements run straight from top to bottom.",
                "It is a flat sequence of statements without any PL.",
                "No PL are defined, so control flows linearly through the file.",
            ],
        )
        .replace("PL", plural),
        1 => format!(
            "It defines one {single}, {}, and otherwise runs from top to bottom.",
            fns[0]
        ),
        n => match r.random_range(0..3) {
            0 => format!("The code is organised into {n} {plural}, including {}.", list(&shown)),
            1 => format!(
                "Its logic is split across {plural} such as {}, with a short main section that ties them together.",
                list(&shown)
            ),
            _ => format!("It defines {n} {plural} ({}).", list(&shown)),
        },
    };
    let mut extra = Vec::new();
    let argp = [
        ("getopts", "getopts"),
        (
            "while [[ $# -gt 0 ]]",
            "a while/case loop over the positional arguments",
        ),
        ("argparse", "argparse"),
        ("param(", "a param() block"),
        ("process.argv", "process.argv"),
        ("%~1", "the %~1 positional parameter"),
        ("sys.argv", "sys.argv"),
    ];
    if let Some((_, how)) = argp.iter().find(|(k, _)| code.contains(k)) {
        extra.push(format!(
            "{} {how}.",
            pick(
                r,
                &[
                    "Command-line options are read with",
                    "Arguments come in through",
                    "Its options are parsed using"
                ]
            )
        ));
    }
    let errs = [
        (
            "set -euo pipefail",
            "set -euo pipefail, so any failing command stops the run",
        ),
        ("trap ", "a trap handler"),
        ("except ", "try/except blocks"),
        ("catch", "try/catch blocks"),
        (
            "errorlevel",
            "errorlevel checks after the important commands",
        ),
        (
            "ErrorActionPreference",
            "$ErrorActionPreference set to Stop, which turns every cmdlet error into a terminating one",
        ),
    ];
    if let Some((_, how)) = errs.iter().find(|(k, _)| code.contains(k)) {
        extra.push(format!(
            "{} {how}.",
            pick(
                r,
                &[
                    "Errors are handled through",
                    "Failure handling relies on",
                    "For error handling it uses"
                ]
            )
        ));
    }
    (main, extra)
}

pub(crate) const TOOLS: &[(Language, &[&str])] = &[
    (
        Language::Bash,
        &[
            "curl",
            "wget",
            "nc ",
            "tar ",
            "gzip",
            "ssh ",
            "rsync",
            "crontab",
            "systemctl",
            "find ",
            "sed ",
            "awk ",
            "python3",
            "docker",
            "iptables",
            "chmod",
            "nohup",
            "pkill",
            "base64",
            "openssl",
            "pg_dump",
            "useradd",
            "git ",
        ],
    ),
    (
        Language::Batch,
        &[
            "reg add",
            "reg query",
            "schtasks",
            "powershell",
            "certutil",
            "bitsadmin",
            "robocopy",
            "xcopy",
            "msiexec",
            "wmic",
            "netsh",
            "vssadmin",
            "psexec",
            "net use",
            "forfiles",
            "ping",
            "attrib",
            "msbuild",
            "wevtutil",
            "bcdedit",
            "sc stop",
            "cleanmgr",
            "wscript",
        ],
    ),
    (
        Language::Javascript,
        &[
            "fetch(",
            "XMLHttpRequest",
            "ActiveXObject",
            "document.createElement",
            "addEventListener",
            "require('fs')",
            "require('child_process')",
            "require('https')",
            "require('net')",
            "express",
            "setInterval",
            "localStorage",
            "navigator.sendBeacon",
            "btoa",
            "JSON.stringify",
            "caches.open",
            "readline",
        ],
    ),
    (
        Language::Powershell,
        &[
            "Invoke-WebRequest",
            "Invoke-RestMethod",
            "Invoke-Expression",
            "New-Object",
            "Get-CimInstance",
            "Set-MpPreference",
            "Add-MpPreference",
            "Start-Process",
            "Get-ChildItem",
            "Set-Content",
            "Send-MailMessage",
            "Get-ADUser",
            "Add-Type",
            "Set-WmiInstance",
            "Invoke-Command",
            "Compress-Archive",
            "robocopy",
            "Start-Service",
            "Export-Csv",
        ],
    ),
    (
        Language::Python,
        &[
            "requests",
            "socket",
            "subprocess",
            "os.walk",
            "argparse",
            "logging",
            "sqlite3",
            "psycopg2",
            "urllib.request",
            "zipfile",
            "base64",
            "threading",
            "flask",
            "csv",
            "json",
            "pynput",
            "unittest",
            "cryptography",
            "win32crypt",
        ],
    ),
];

pub(crate) fn tools_used(l: Language, code: &str) -> Vec<String> {
    TOOLS
        .iter()
        .filter(|(lang, _)| *lang == l)
        .flat_map(|(_, ts)| ts.iter())
        .filter(|t| code.contains(**t))
        .map(|t| t.trim().trim_end_matches('(').to_string())
        .take(6)
        .collect()
}

pub(crate) fn runtime(l: Language, code: &str) -> &'static str {
    match l {
        Language::Bash => "a POSIX shell such as /bin/bash on Linux or another Unix system",
        Language::Batch => "cmd.exe on Windows",
        Language::Javascript if code.contains("ActiveXObject") || code.contains("WScript") => {
            "Windows Script Host (wscript.exe or cscript.exe), not a browser"
        }
        Language::Javascript if code.contains("require(") => {
            "Node.js on the server or a developer machine"
        }
        Language::Javascript if code.contains("self.addEventListener") => {
            "the browser as a service worker"
        }
        Language::Javascript => "the browser, inside the page that loads it",
        Language::Powershell => "powershell.exe or pwsh on Windows",
        Language::Python => "a Python 3 interpreter",
    }
}

pub(crate) fn attack_ids(behaviours: &[String]) -> Vec<String> {
    let mut ids = Vec::new();
    for b in behaviours {
        let mut rest = b.as_str();
        while let Some(p) = rest.find('T') {
            let cand: String = rest[p..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '.')
                .collect();
            if cand.len() >= 5
                && cand[1..5].chars().all(|c| c.is_ascii_digit())
                && !ids.contains(&cand)
            {
                ids.push(cand.clone());
            }
            rest = &rest[p + 1..];
        }
    }
    ids
}
