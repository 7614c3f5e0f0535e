//! Generic utility functions that real scripts accumulate (retry wrappers, byte
//! formatting, config loading, privilege checks). They are inserted where the language
//! allows definitions, so the script stays valid and its structure varies.

use rand::Rng;

use super::names::{self, pick, R};
use automaldesc_common::types::Language;

const PY: &[&str] = &[
    "def retry(fn, attempts=3, delay=2.0):\n    import time\n    for i in range(attempts):\n        try:\n            return fn()\n        except Exception:\n            if i == attempts - 1:\n                raise\n            time.sleep(delay * (i + 1))\n",
    "def human_bytes(n):\n    for unit in (\"B\", \"KB\", \"MB\", \"GB\", \"TB\"):\n        if n < 1024:\n            return f\"{n:.1f} {unit}\"\n        n /= 1024\n    return f\"{n:.1f} PB\"\n",
    "def load_config(path, defaults=None):\n    import json\n    import os\n    cfg = dict(defaults or {})\n    if os.path.exists(path):\n        with open(path, encoding=\"utf-8\") as fh:\n            cfg.update(json.load(fh))\n    return cfg\n",
    "def chunked(seq, size):\n    for i in range(0, len(seq), size):\n        yield seq[i:i + size]\n",
    "def env_flag(name, default=False):\n    import os\n    val = os.environ.get(name)\n    if val is None:\n        return default\n    return val.strip().lower() in (\"1\", \"true\", \"yes\", \"on\")\n",
];

const PS: &[&str] = &[
    "function Test-IsAdmin {\n    $id = [Security.Principal.WindowsIdentity]::GetCurrent()\n    return ([Security.Principal.WindowsPrincipal]$id).IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)\n}\n",
    "function Format-Bytes([long]$Bytes) {\n    $units = 'B', 'KB', 'MB', 'GB', 'TB'\n    $i = 0\n    $v = [double]$Bytes\n    while ($v -ge 1024 -and $i -lt $units.Count - 1) { $v /= 1024; $i++ }\n    return ('{0:N1} {1}' -f $v, $units[$i])\n}\n",
    "function Invoke-WithRetry {\n    param([scriptblock]$Action, [int]$Attempts = 3, [int]$DelaySeconds = 5)\n    for ($i = 1; $i -le $Attempts; $i++) {\n        try { return & $Action }\n        catch {\n            if ($i -eq $Attempts) { throw }\n            Start-Sleep -Seconds ($DelaySeconds * $i)\n        }\n    }\n}\n",
    "function Get-ConfigValue {\n    param([string]$Name, $Default = $null)\n    $value = [Environment]::GetEnvironmentVariable($Name)\n    if ([string]::IsNullOrWhiteSpace($value)) { return $Default }\n    return $value\n}\n",
];

const JS: &[&str] = &[
    "function debounce(fn, wait) {\n  var timer = null;\n  return function () {\n    var args = arguments, self = this;\n    clearTimeout(timer);\n    timer = setTimeout(function () { fn.apply(self, args); }, wait);\n  };\n}\n",
    "function formatBytes(n) {\n  var units = ['B', 'KB', 'MB', 'GB'];\n  var i = 0;\n  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }\n  return n.toFixed(1) + ' ' + units[i];\n}\n",
    "function padLeft(s, width, ch) {\n  s = String(s);\n  while (s.length < width) s = (ch || ' ') + s;\n  return s;\n}\n",
    "function isoDate(d) {\n  d = d || new Date();\n  return d.getFullYear() + '-' + padTwo(d.getMonth() + 1) + '-' + padTwo(d.getDate());\n}\n\nfunction padTwo(n) {\n  return n < 10 ? '0' + n : String(n);\n}\n",
];

const BAT: &[&str] = &[
    ":check_admin\nnet session >nul 2>&1\nif errorlevel 1 (\n    echo This script must run elevated.\n    exit /b 1\n)\ngoto :eof\n",
    ":timestamp\nfor /f \"tokens=2 delims==\" %%a in ('wmic os get localdatetime /value') do set \"TS=%%a\"\nset \"TS=%TS:~0,8%-%TS:~8,6%\"\ngoto :eof\n",
    ":ensure_dir\nif not exist \"%~1\" mkdir \"%~1\"\ngoto :eof\n",
    ":trim_log\nfor %%f in (\"%~1\") do if %%~zf GTR 10485760 move /y \"%~1\" \"%~1.old\" >nul\ngoto :eof\n",
];

/// Insert between one and three utility functions; Bash families carry their own.
pub(crate) fn add_helpers(lang: Language, content: &mut String, r: &mut R) {
    let pool = match lang {
        Language::Python => PY,
        Language::Powershell => PS,
        Language::Javascript => JS,
        Language::Batch => BAT,
        Language::Bash => return,
    };
    let n = r.random_range(1..=3.min(pool.len()));
    let start = r.random_range(0..pool.len());
    let block: Vec<&str> = (0..n).map(|i| pool[(start + i) % pool.len()]).collect();
    match lang {
        Language::Python => {
            let at = python_insert_point(content);
            content.insert_str(at, &format!("\n\n{}\n", block.join("\n\n")));
        }
        Language::Powershell => {
            const EAP: &str = "$ErrorActionPreference = 'Stop'\n";
            let at = match content.find(EAP) {
                Some(p) => p + EAP.len(),
                None if content.contains("param(") => content.len(),
                None => 0,
            };
            content.insert_str(at, &format!("{}\n", block.join("\n")));
        }
        Language::Javascript => {
            if !content.ends_with('\n') {
                content.push('\n');
            }
            content.push('\n');
            content.push_str(&block.join("\n"));
        }
        Language::Batch => {
            let last = content
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if !(last.starts_with("exit") || last.starts_with("goto :eof")) {
                content.push_str("exit /b 0\n");
            }
            content.push('\n');
            content.push_str(&block.join("\n"));
        }
        Language::Bash => {}
    }
}

fn python_insert_point(content: &str) -> usize {
    let mut pos = 0;
    let mut after_imports = None;
    for line in content.split_inclusive('\n') {
        if line.starts_with("def ") || line.starts_with("class ") || line.starts_with("if __name__")
        {
            break;
        }
        pos += line.len();
        if line.starts_with("import ") || line.starts_with("from ") {
            after_imports = Some(pos);
        }
    }
    match after_imports {
        Some(p) => p,
        None if content.starts_with("#!") => content.find('\n').map(|i| i + 1).unwrap_or(0),
        None => 0,
    }
}

/// Prepend a vendor-style header (copyright, version, short changelog). Applied with the
/// same probability to both labels, so a polished header says nothing about intent.
pub(crate) fn add_banner(lang: Language, content: &mut String, r: &mut R) {
    let company = names::pascal(names::company(r));
    let year = r.random_range(2015..2025);
    let ver = names::version(r);
    let lines = [
        format!("Copyright (c) {year} {company} Inc. All rights reserved."),
        format!("Version: {ver}"),
        "Changelog:".to_string(),
        format!(
            "  {ver}  {}",
            pick(
                r,
                &[
                    "fix retry handling",
                    "support proxies",
                    "faster startup",
                    "log rotation tweaks",
                    "minor cleanups"
                ]
            )
        ),
        format!("  1.0.0  initial release ({year})"),
    ];
    let (prefix, open, close) = match lang {
        Language::Bash | Language::Python => ("# ", "", ""),
        Language::Batch => (":: ", "", ""),
        Language::Javascript => (" * ", "/*\n", " */\n"),
        Language::Powershell => ("# ", "", ""),
    };
    let mut block = String::from(open);
    for l in &lines {
        block.push_str(prefix);
        block.push_str(l);
        block.push('\n');
    }
    block.push_str(close);
    let first = content.lines().next().unwrap_or("");
    let at = if first.starts_with("#!") || first.to_ascii_lowercase().starts_with("@echo off") {
        content.find('\n').map(|i| i + 1).unwrap_or(content.len())
    } else {
        0
    };
    content.insert_str(at, &block);
}
