//! Guesses a script's language for import: by file extension first, then by the `#!` line,
//! then by scoring language-specific keywords in the text. Also recognises binary files,
//! which are not scripts and must be refused rather than annotated.

use std::path::Path;

use automaldesc_common::types::Language;

mod scores;
pub use scores::content_scores;

/// Which evidence decided the language.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DetectedBy {
    Extension,
    Shebang,
    Content,
}

/// The language implied by a file name's extension, if it is one of ours.
pub fn language_from_extension(path: &Path) -> Option<Language> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    match ext.as_str() {
        "sh" | "bash" => Some(Language::Bash),
        "bat" | "cmd" => Some(Language::Batch),
        "js" | "mjs" | "cjs" => Some(Language::Javascript),
        "ps1" | "psm1" | "psd1" => Some(Language::Powershell),
        "py" => Some(Language::Python),
        _ => None,
    }
}

/// What a `#!` line says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Shebang {
    Absent,
    Known(Language),
    /// An interpreter that is not one of our languages (perl, ruby, awk...).
    Other(String),
}

/// Reads the interpreter from a `#!` first line, looking through `env` and its options.
pub fn shebang(content: &[u8]) -> Shebang {
    let Some(rest) = content.strip_prefix(b"#!") else {
        return Shebang::Absent;
    };
    let line_end = rest
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(rest.len())
        .min(256);
    let line = String::from_utf8_lossy(&rest[..line_end]);
    let mut words = line.split_whitespace();
    let Some(first) = words.next() else {
        return Shebang::Absent;
    };
    let mut interp = first.rsplit('/').next().unwrap_or(first);
    if interp == "env" {
        // `env -S python3 -u`, `env python3`: skip options and VAR=value assignments.
        match words.find(|w| !w.starts_with('-') && !w.contains('=')) {
            Some(w) => interp = w.rsplit('/').next().unwrap_or(w),
            None => return Shebang::Other("env".to_string()),
        }
    }
    match interpreter_language(interp) {
        Some(l) => Shebang::Known(l),
        None => Shebang::Other(interp.to_string()),
    }
}

fn interpreter_language(interp: &str) -> Option<Language> {
    let name = interp.to_ascii_lowercase();
    // python3, python3.11, python2.7, pypy3...
    let base = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
    match base {
        "sh" | "bash" | "dash" | "ash" | "ksh" | "mksh" | "zsh" | "busybox" => Some(Language::Bash),
        "python" | "pypy" => Some(Language::Python),
        "node" | "nodejs" | "deno" | "bun" | "qjs" => Some(Language::Javascript),
        "pwsh" | "powershell" | "pwsh-preview" => Some(Language::Powershell),
        "cmd" | "cmd.exe" => Some(Language::Batch),
        _ => None,
    }
}

/// Why the bytes are not a text script, if they are not.
pub fn binary_reason(content: &[u8]) -> Option<String> {
    let sample = &content[..content.len().min(64 * 1024)];
    if sample.is_empty() {
        return None;
    }
    // UTF-16 scripts (common for PowerShell on Windows) have NULs but a byte-order mark.
    let utf16 = sample.starts_with(&[0xFF, 0xFE]) || sample.starts_with(&[0xFE, 0xFF]);
    if !utf16 {
        if let Some(pos) = sample.iter().position(|&b| b == 0) {
            return Some(format!("binary: NUL byte at offset {pos}"));
        }
    } else {
        return None;
    }
    let text = std::str::from_utf8(sample).is_ok()
        // A multi-byte sequence cut at the sample's end is still text.
        || std::str::from_utf8(&sample[..sample.len().saturating_sub(3)]).is_ok();
    if text {
        return None;
    }
    let odd = sample
        .iter()
        .filter(|&&b| (b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r' | 0x0c | 0x1b)) || b == 0x7f)
        .count();
    let ratio = odd as f64 / sample.len() as f64;
    if ratio > 0.10 {
        Some(format!(
            "binary: {:.0}% control bytes in the first {} bytes",
            ratio * 100.0,
            sample.len()
        ))
    } else {
        None
    }
}

/// Detects the language: extension, then shebang, then content. A shebang naming another
/// interpreter (perl...) means "none of ours": content is not consulted then.
pub fn detect(path: &Path, content: &[u8]) -> (Option<Language>, Option<DetectedBy>) {
    if let Some(l) = language_from_extension(path) {
        return (Some(l), Some(DetectedBy::Extension));
    }
    match shebang(content) {
        Shebang::Known(l) => (Some(l), Some(DetectedBy::Shebang)),
        Shebang::Other(_) => (None, None),
        Shebang::Absent => match language_from_content(content) {
            Some(l) => (Some(l), Some(DetectedBy::Content)),
            None => (None, None),
        },
    }
}

/// Scores keywords per language over the first 64 KiB; returns the clear winner, if any.
pub fn language_from_content(content: &[u8]) -> Option<Language> {
    let scores = content_scores(content);
    let mut ranked: Vec<(Language, f64)> = Language::ALL
        .iter()
        .map(|&l| (l, scores[l.index()]))
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    let (best, top) = ranked[0];
    let second = ranked[1].1;
    (top >= 3.0 && top > second * 1.2).then_some(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shebangs_through_env() {
        assert_eq!(
            shebang(b"#!/usr/bin/env python3\nx"),
            Shebang::Known(Language::Python)
        );
        assert_eq!(
            shebang(b"#!/usr/bin/env -S node --harmony\n"),
            Shebang::Known(Language::Javascript)
        );
        assert_eq!(shebang(b"#! /bin/sh -e\n"), Shebang::Known(Language::Bash));
        assert_eq!(
            shebang(b"#!/usr/bin/pwsh\n"),
            Shebang::Known(Language::Powershell)
        );
        assert_eq!(
            shebang(b"#!/usr/bin/python3.11\n"),
            Shebang::Known(Language::Python)
        );
        assert_eq!(
            shebang(b"#!/usr/bin/perl -w\n"),
            Shebang::Other("perl".into())
        );
        assert_eq!(shebang(b"echo hi\n"), Shebang::Absent);
    }

    #[test]
    fn content_of_each_language() {
        let cases: [(&str, Language); 5] = [
            ("@echo off\nsetlocal\nset /a n=1\nif exist foo goto end\n:end\n", Language::Batch),
            ("if [ -f \"$1\" ]; then\n  echo yes\nfi\nfor x in a b; do\n  echo $x\ndone\n", Language::Bash),
            ("const fs = require('fs');\nfs.readFile(p, (e, d) => {\n  console.log(d);\n});\n", Language::Javascript),
            ("param([string]$Path)\n$x = Get-ChildItem $Path\nif ($x -eq $null) { Write-Host 'none' }\n", Language::Powershell),
            ("import os\n\ndef main():\n    for f in os.listdir('.'):\n        print(f)\n\nif __name__ == '__main__':\n    main()\n", Language::Python),
        ];
        for (src, want) in cases {
            assert_eq!(language_from_content(src.as_bytes()), Some(want), "{src}");
        }
        assert_eq!(language_from_content(b"hello world\n"), None);
    }

    #[test]
    fn extension_beats_shebang_and_other_interpreters_are_unknown() {
        let (l, by) = detect(Path::new("a/b.PS1"), b"#!/bin/sh\n");
        assert_eq!(
            (l, by),
            (Some(Language::Powershell), Some(DetectedBy::Extension))
        );
        assert_eq!(
            detect(Path::new("tool"), b"#!/usr/bin/perl\nprint 1;\n"),
            (None, None)
        );
    }

    #[test]
    fn binary_files_are_recognised() {
        assert!(binary_reason(b"\x7fELF\x02\x01\x01\x00\x00")
            .unwrap()
            .contains("NUL"));
        assert!(binary_reason(b"echo h\xc3\xa9llo\n").is_none());
        assert!(binary_reason(&[0xFF, 0xFE, b'a', 0]).is_none());
        let noisy: Vec<u8> = (0..1000u32)
            .map(|i| [0x01, 0x02, 0x90, b'a'][(i % 4) as usize])
            .collect();
        assert!(binary_reason(&noisy).unwrap().contains("control bytes"));
    }
}
