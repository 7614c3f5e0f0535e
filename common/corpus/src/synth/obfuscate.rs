//! Real obfuscation layers: every wrapper decodes back to the exact inner script.

use rand::Rng;

use super::names::{self, pick, R};
use automaldesc_common::types::Language;

/// An obfuscated script and how to describe it.
pub(crate) struct Obf {
    pub content: String,
    /// Noun phrase describing the layer, e.g. "a base64 string piped through base64 -d into bash".
    pub technique: String,
    /// Tokens of the wrapper that occur verbatim in `content`.
    pub iocs: Vec<String>,
    pub behaviour: &'static str,
}

const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub(crate) fn b64encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(B64[(n >> 18) as usize & 63] as char);
        out.push(B64[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            B64[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            B64[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

/// Decode standard base64, ignoring whitespace; `None` on any other invalid byte.
#[cfg(test)]
pub(crate) fn b64decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in text.bytes() {
        if c.is_ascii_whitespace() {
            continue;
        }
        if c == b'=' {
            break;
        }
        let v = B64.iter().position(|&x| x == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

pub(crate) fn utf16le(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(|u| u.to_le_bytes()).collect()
}

fn hex(data: &[u8]) -> String {
    hex::encode(data)
}

/// Split into chunks of `n` characters (ASCII input).
fn chunks(s: &str, n: usize) -> Vec<&str> {
    let mut v = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let j = (i + n).min(s.len());
        v.push(&s[i..j]);
        i = j;
    }
    v
}

fn var(r: &mut R) -> String {
    format!(
        "{}{}",
        pick(r, &["x", "q", "z", "k", "v", "o", "m"]),
        names::token(r, 4)
    )
}

const T1027: &str = "Obfuscates its payload with an encoding layer (T1027)";

/// Wrap `inner` in a randomly chosen obfuscation layer for `lang`.
pub(crate) fn wrap(lang: Language, inner: &str, r: &mut R) -> Obf {
    match lang {
        Language::Bash => bash(inner, r),
        Language::Batch => batch(inner, r),
        Language::Javascript => javascript(inner, r),
        Language::Powershell => powershell(inner, r),
        Language::Python => python(inner, r),
    }
}

fn bash(inner: &str, r: &mut R) -> Obf {
    let b = b64encode(inner.as_bytes());
    match r.random_range(0..4) {
        0 => Obf {
            content: format!("#!/bin/bash\necho '{b}' | base64 -d | bash\n"),
            technique: "a single base64 string echoed through base64 -d and piped into bash".into(),
            iocs: vec!["base64 -d | bash".into()],
            behaviour: T1027,
        },
        1 => {
            let parts: Vec<String> = chunks(&b, 76)
                .iter()
                .map(|c| format!("{}='{c}'", var(r)))
                .collect();
            let names: Vec<String> = parts
                .iter()
                .map(|p| format!("${}", p.split('=').next().unwrap_or("")))
                .collect();
            Obf {
                content: format!(
                    "#!/bin/bash\n{}\neval \"$(printf '%s' \"{}\" | base64 --decode)\"\n",
                    parts.join("\n"),
                    names.join("")
                ),
                technique: format!(
                    "a base64 payload split across {} shell variables that are concatenated, decoded with base64 --decode and passed to eval",
                    parts.len()
                ),
                iocs: vec!["base64 --decode".into(), "eval".into()],
                behaviour: T1027,
            }
        }
        2 => {
            let hx = hex(inner.as_bytes());
            let head: String = hx.chars().take(16).collect();
            Obf {
                content: format!(
                    "#!/bin/sh\n# {}\neval \"$(echo '{hx}' | xxd -r -p)\"\n",
                    pick(r, &["cache", "init", "setup", "helper"]),
                ),
                technique: format!("a hex-encoded blob (beginning {head}) converted back with xxd -r -p and run through eval"),
                iocs: vec![head, "xxd -r -p".into()],
                behaviour: T1027,
            }
        }
        _ => {
            let esc: String = inner.bytes().map(|c| format!("\\x{c:02x}")).collect();
            let head: String = esc.chars().take(12).collect();
            Obf {
                content: format!("#!/bin/bash\neval \"$(printf '{esc}')\"\n"),
                technique: format!("a printf string made entirely of hex escapes, starting {head}, whose output is handed to eval"),
                iocs: vec![head, "eval".into()],
                behaviour: T1027,
            }
        }
    }
}

fn batch(inner: &str, r: &mut R) -> Obf {
    if r.random_bool(0.5) {
        // Variable substring trick: letters replaced by %v:~N,1% slices of a shuffled alphabet.
        let mut alpha: Vec<char> = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
            .chars()
            .collect();
        for i in (1..alpha.len()).rev() {
            let j = r.random_range(0..=i);
            alpha.swap(i, j);
        }
        let v = var(r);
        let alpha_s: String = alpha.iter().collect();
        let mut out = format!("@echo off\nset \"{v}={alpha_s}\"\n");
        let mut example = String::new();
        for line in inner.lines() {
            let t = line.trim_start().to_ascii_lowercase();
            if t.starts_with("@echo") || t.starts_with(':') || t.starts_with("rem") || t.is_empty()
            {
                out.push_str(line);
                out.push('\n');
                continue;
            }
            let chars: Vec<char> = line.chars().collect();
            let mut i = 0;
            while i < chars.len() {
                let c = chars[i];
                if c == '%' || c == '!' {
                    // Copy variable references verbatim: %VAR%, %%i, %~dp0, !VAR!.
                    out.push(c);
                    i += 1;
                    if c == '%' && i < chars.len() && (chars[i] == '%' || chars[i] == '~') {
                        while i < chars.len()
                            && (chars[i].is_ascii_alphanumeric()
                                || chars[i] == '%'
                                || chars[i] == '~')
                        {
                            out.push(chars[i]);
                            i += 1;
                        }
                        continue;
                    }
                    while i < chars.len() && chars[i] != c {
                        out.push(chars[i]);
                        i += 1;
                    }
                    if i < chars.len() {
                        out.push(chars[i]);
                        i += 1;
                    }
                    continue;
                }
                match alpha.iter().position(|&a| a == c) {
                    Some(p) if r.random_bool(0.7) => {
                        let slice = format!("%{v}:~{p},1%");
                        if example.is_empty() {
                            example = slice.clone();
                        }
                        out.push_str(&slice);
                    }
                    _ => out.push(c),
                }
                i += 1;
            }
            out.push('\n');
        }
        Obf {
            content: out,
            technique: format!(
                "a shuffled alphabet stored in the variable {v}, with most letters of every command rebuilt from substring slices such as {example} that cmd.exe expands at run time"
            ),
            iocs: vec![example, v],
            behaviour: T1027,
        }
    } else {
        let b = b64encode(inner.as_bytes());
        let f = names::token(r, 6);
        let mut out = String::from("@echo off\n");
        out.push_str(&format!(
            "if exist \"%TEMP%\\{f}.b64\" del \"%TEMP%\\{f}.b64\"\n"
        ));
        for c in chunks(&b, 64) {
            out.push_str(&format!(">>\"%TEMP%\\{f}.b64\" echo {c}\n"));
        }
        out.push_str(&format!(
            "certutil -f -decode \"%TEMP%\\{f}.b64\" \"%TEMP%\\{f}.cmd\" >nul 2>&1\ncall \"%TEMP%\\{f}.cmd\"\ndel \"%TEMP%\\{f}.b64\" \"%TEMP%\\{f}.cmd\" >nul 2>&1\n"
        ));
        Obf {
            content: out,
            technique: format!(
                "base64 text echoed line by line into %TEMP%\\{f}.b64, decoded with certutil -f -decode into %TEMP%\\{f}.cmd, called and then deleted"
            ),
            iocs: vec!["certutil -f -decode".into(), format!("{f}.cmd")],
            behaviour: "Decodes a staged payload with certutil (T1140, T1027)",
        }
    }
}

fn javascript(inner: &str, r: &mut R) -> Obf {
    let node = inner.contains("require(");
    let wsh = inner.contains("ActiveXObject") || inner.contains("WScript");
    let v = format!("_0x{}", names::token(r, 4));
    match r.random_range(0..4) {
        0 => {
            let key: u16 = r.random_range(1..90);
            let codes: Vec<String> = inner
                .encode_utf16()
                .map(|c| (c ^ key).to_string())
                .collect();
            Obf {
                content: format!(
                    "var {v} = [{}];\nvar {v}k = {key};\neval({v}.map(function (c) {{ return String.fromCharCode(c ^ {v}k); }}).join(''));\n",
                    codes.join(",")
                ),
                technique: format!(
                    "an array of character codes XOR-ed with the key {key}, turned back into text with String.fromCharCode and passed to eval"
                ),
                iocs: vec!["String.fromCharCode".into(), "eval(".into(), v.clone()],
                behaviour: T1027,
            }
        }
        1 if !wsh => {
            let b = b64encode(inner.as_bytes());
            let (content, how) = if node {
                (
                    format!(
                        "const {v} = '{b}';\neval(Buffer.from({v}, 'base64').toString('utf8'));\n"
                    ),
                    "Buffer.from(..., 'base64')",
                )
            } else {
                (format!("var {v} = '{b}';\neval(atob({v}));\n"), "atob")
            };
            Obf {
                content,
                technique: format!("a base64 string decoded with {how} and executed through eval"),
                iocs: vec!["eval(".into(), v],
                behaviour: T1027,
            }
        }
        2 => {
            let esc: String = inner
                .encode_utf16()
                .map(|c| format!("\\x{c:02x}"))
                .collect();
            let esc = if inner.is_ascii() {
                esc
            } else {
                inner
                    .encode_utf16()
                    .map(|c| format!("\\u{c:04x}"))
                    .collect()
            };
            Obf {
                content: format!("var {v} = \"{esc}\";\nnew Function({v})();\n"),
                technique: "one long string literal written entirely as \\x hex escapes that is compiled with new Function and invoked".into(),
                iocs: vec!["new Function(".into(), v.clone()],
                behaviour: T1027,
            }
        }
        _ => {
            let codes: Vec<String> = inner.encode_utf16().map(|c| c.to_string()).collect();
            let parts = chunks_vec(&codes, 40);
            let mut order: Vec<usize> = (0..parts.len()).collect();
            for i in (1..order.len()).rev() {
                let j = r.random_range(0..=i);
                order.swap(i, j);
            }
            // Store chunks shuffled, plus the index list that restores the original order.
            let mut stored = vec![String::new(); parts.len()];
            let mut idx = vec![0usize; parts.len()];
            for (orig, &pos) in order.iter().enumerate() {
                stored[pos] = format!("[{}]", parts[orig].join(","));
                idx[orig] = pos;
            }
            let idx_s: Vec<String> = idx.iter().map(|i| i.to_string()).collect();
            Obf {
                content: format!(
                    "var {v} = [\n{}\n];\nvar {v}o = [{}];\nvar {v}s = '';\nfor (var i = 0; i < {v}o.length; i++) {{\n  {v}s += String.fromCharCode.apply(null, {v}[{v}o[i]]);\n}}\neval({v}s);\n",
                    stored.join(",\n"),
                    idx_s.join(",")
                ),
                technique: format!(
                    "{} shuffled arrays of character codes that an index table puts back in order before String.fromCharCode rebuilds the source for eval",
                    parts.len()
                ),
                iocs: vec!["String.fromCharCode".into(), "eval(".into(), v.clone()],
                behaviour: T1027,
            }
        }
    }
}

fn chunks_vec(v: &[String], n: usize) -> Vec<Vec<String>> {
    v.chunks(n).map(|c| c.to_vec()).collect()
}

fn powershell(inner: &str, r: &mut R) -> Obf {
    let v = var(r);
    match r.random_range(0..4) {
        0 => {
            let enc = b64encode(&utf16le(inner));
            let flags = pick(
                r,
                &[
                    "-NoP -W Hidden -NonI -Exec Bypass",
                    "-NoProfile -WindowStyle Hidden -ExecutionPolicy Bypass",
                    "-nop -w hidden -ep bypass",
                ],
            );
            Obf {
                content: format!("powershell.exe {flags} -EncodedCommand {enc}\n"),
                technique: format!(
                    "a new powershell.exe started with {flags} and -EncodedCommand, whose argument is the UTF-16LE base64 form of the real script"
                ),
                iocs: vec!["-EncodedCommand".into(), "powershell.exe".into()],
                behaviour: "Runs PowerShell with -EncodedCommand (T1059.001, T1027)",
            }
        }
        1 => {
            let b = b64encode(inner.as_bytes());
            let parts: Vec<String> = chunks(&b, 100).iter().map(|c| format!("'{c}'")).collect();
            Obf {
                content: format!(
                    "${v} = {}\n${v}i = 'I' + 'nvoke-Ex' + 'pression'\n& ${v}i ([Text.Encoding]::UTF8.GetString([Convert]::FromBase64String(${v})))\n",
                    parts.join(" +\n    ")
                ),
                technique: format!(
                    "{} concatenated base64 fragments decoded with [Convert]::FromBase64String and run by an Invoke-Expression whose name is itself assembled from pieces",
                    parts.len()
                ),
                iocs: vec!["FromBase64String".into(), "'I' + 'nvoke-Ex' + 'pression'".into()],
                behaviour: T1027,
            }
        }
        2 => {
            let codes: Vec<String> = inner.encode_utf16().map(|c| c.to_string()).collect();
            Obf {
                content: format!(
                    "${v} = @({})\niex (-join (${v} | ForEach-Object {{ [char]$_ }}))\n",
                    codes.join(",")
                ),
                technique: "an array of numeric character codes cast back with [char], joined with -join and executed with iex".into(),
                iocs: vec!["[char]".into(), "-join".into(), "iex".into()],
                behaviour: T1027,
            }
        }
        _ => {
            let key: u8 = r.random_range(1..=255);
            let x: Vec<u8> = inner.bytes().map(|c| c ^ key).collect();
            let b = b64encode(&x);
            Obf {
                content: format!(
                    "${v}k = 0x{key:02X}\n${v} = [Convert]::FromBase64String('{b}')\nfor ($i = 0; $i -lt ${v}.Length; $i++) {{ ${v}[$i] = ${v}[$i] -bxor ${v}k }}\nInvoke-Expression ([Text.Encoding]::UTF8.GetString(${v}))\n"
                ),
                technique: format!(
                    "a base64 blob decoded with [Convert]::FromBase64String and XOR-ed byte by byte with the key 0x{key:02X} before Invoke-Expression runs it"
                ),
                iocs: vec!["FromBase64String".into(), "-bxor".into()],
                behaviour: T1027,
            }
        }
    }
}

fn python(inner: &str, r: &mut R) -> Obf {
    let v = var(r);
    match r.random_range(0..4) {
        0 => {
            let b = b64encode(inner.as_bytes());
            Obf {
                content: format!("import base64\n{v} = '{b}'\nexec(base64.b64decode({v}))\n"),
                technique: "a base64 string decoded with base64.b64decode and executed with exec"
                    .into(),
                iocs: vec!["base64.b64decode".into(), "exec(".into()],
                behaviour: T1027,
            }
        }
        1 => Obf {
            content: format!(
                "{v} = '{}'\nexec(bytes.fromhex({v}).decode())\n",
                hex(inner.as_bytes())
            ),
            technique: "a hex string turned back into source with bytes.fromhex and run by exec"
                .into(),
            iocs: vec!["bytes.fromhex".into(), "exec(".into()],
            behaviour: T1027,
        },
        2 => {
            let key: u8 = r.random_range(1..=255);
            let x: Vec<u8> = inner.bytes().map(|c| c ^ key).collect();
            Obf {
                content: format!(
                    "import base64\n{v} = base64.b64decode('{}')\nexec(bytes(b ^ {key} for b in {v}).decode())\n",
                    b64encode(&x)
                ),
                technique: format!(
                    "a base64 blob that is decoded with base64.b64decode, XOR-ed with the single-byte key {key} and executed by exec"
                ),
                iocs: vec!["base64.b64decode".into(), "exec(".into()],
                behaviour: T1027,
            }
        }
        _ => {
            let b: String = b64encode(inner.as_bytes()).chars().rev().collect();
            Obf {
                content: format!("{v} = '{b}'\nexec(__import__('base64').b64decode({v}[::-1]))\n"),
                technique: "a reversed base64 string that is flipped with [::-1], decoded through __import__('base64').b64decode and executed with exec".into(),
                iocs: vec!["__import__('base64')".into(), "exec(".into()],
                behaviour: T1027,
            }
        }
    }
}
