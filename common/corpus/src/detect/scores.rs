//! Keyword scores of a script's content per language: one pass over its lines, each
//! language's scorer adding weights for the constructs that mark it.

use automaldesc_common::types::Language;

/// Per-language keyword scores, indexed by `Language::index`.
pub fn content_scores(content: &[u8]) -> [f64; 5] {
    let text = String::from_utf8_lossy(&content[..content.len().min(64 * 1024)]);
    let mut s = [0.0f64; 5];
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        let lower = line.to_ascii_lowercase();
        score_bash(line, &mut s[Language::Bash.index()]);
        score_batch(line, &lower, &mut s[Language::Batch.index()]);
        score_javascript(line, &mut s[Language::Javascript.index()]);
        score_powershell(line, &lower, &mut s[Language::Powershell.index()]);
        score_python(raw, line, &mut s[Language::Python.index()]);
    }
    s
}

fn add(score: &mut f64, cond: bool, w: f64) {
    if cond {
        *score += w;
    }
}

fn score_bash(l: &str, s: &mut f64) {
    add(
        s,
        matches!(l, "fi" | "then" | "done" | "esac" | "do" | "else" | "};"),
        2.0,
    );
    add(
        s,
        l.ends_with("; then") || l.ends_with("; do") || l.ends_with(";;"),
        3.0,
    );
    add(
        s,
        l.starts_with("if [") || l.starts_with("elif [") || l.starts_with("while ["),
        3.0,
    );
    add(s, l.starts_with("case ") && l.ends_with(" in"), 3.0);
    add(s, l.starts_with("export ") && l.contains('='), 2.0);
    add(
        s,
        l.starts_with("local ") || l.starts_with("readonly "),
        2.0,
    );
    add(
        s,
        l.starts_with("set -") || l.starts_with("shift") || l.starts_with("trap "),
        2.0,
    );
    add(s, l.contains("2>&1") || l.contains("/dev/null"), 2.0);
    add(s, l.contains("$(") || l.contains("${"), 1.0);
    add(
        s,
        l.contains("\"$@\"") || l.contains("$1") || l.contains("$#") || l.contains("$?"),
        1.0,
    );
    add(s, l.contains("[ -") || l.contains("[[ "), 1.5);
    add(s, l.ends_with("() {") || l.ends_with("(){"), 3.0);
    add(s, l.starts_with("echo ") || l.starts_with("printf "), 0.5);
    add(s, l.contains(" || ") || l.contains(" && "), 0.3);
    add(
        s,
        l.starts_with("exit ") && l[5..].trim().parse::<i32>().is_ok(),
        1.0,
    );
    add(s, l.starts_with("exec ") || l.starts_with("return $"), 1.5);
    add(s, is_shell_assignment(l), 1.5);
}

/// `NAME=value` with no space around `=`: a shell assignment (Python and PowerShell space it,
/// batch prefixes it with `set`).
fn is_shell_assignment(l: &str) -> bool {
    let Some(eq) = l.find('=') else { return false };
    let name = &l[..eq];
    !name.is_empty()
        && !l[eq + 1..].starts_with('=')
        && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn score_batch(l: &str, lower: &str, s: &mut f64) {
    add(
        s,
        lower.starts_with("@echo off") || lower.starts_with("echo off"),
        10.0,
    );
    add(
        s,
        lower.starts_with("rem ") || lower == "rem" || l.starts_with("::"),
        3.0,
    );
    add(
        s,
        lower.contains("%~dp0") || lower.contains("%errorlevel%") || lower.contains("%~"),
        4.0,
    );
    add(
        s,
        lower.starts_with("goto ") || lower.contains(" goto "),
        3.0,
    );
    add(
        s,
        lower.starts_with("setlocal") || lower.starts_with("endlocal"),
        4.0,
    );
    add(
        s,
        lower.starts_with("set /a ") || lower.starts_with("set /p ") || lower.starts_with("set \""),
        4.0,
    );
    add(
        s,
        lower.starts_with("if exist ")
            || lower.starts_with("if not exist ")
            || lower.starts_with("if errorlevel"),
        4.0,
    );
    add(
        s,
        lower.starts_with("exit /b") || lower.starts_with("call :"),
        4.0,
    );
    add(s, lower == "pause" || lower == "cls", 2.0);
    add(
        s,
        l.starts_with(':')
            && !l.starts_with("::")
            && l.len() > 1
            && l[1..].chars().all(|c| c.is_alphanumeric() || c == '_'),
        1.5,
    );
    add(
        s,
        lower.starts_with("set ") && l.contains('=') && !l.contains(" = "),
        0.5,
    );
    add(
        s,
        l.matches('%').count() >= 2 && !l.contains("%s") && !l.contains("%d"),
        0.5,
    );
}

fn score_javascript(l: &str, s: &mut f64) {
    add(
        s,
        (l.starts_with("const ") || l.starts_with("let ")) && l.contains('='),
        2.0,
    );
    add(
        s,
        l.starts_with("var ") && l.contains('=') && l.ends_with(';'),
        2.0,
    );
    add(s, l.contains("=>"), 2.0);
    add(
        s,
        l.contains("require(") || l.contains("module.exports") || l.starts_with("exports."),
        4.0,
    );
    add(
        s,
        l.contains("console.log") || l.contains("JSON.parse") || l.contains("JSON.stringify"),
        4.0,
    );
    add(
        s,
        l.contains("document.") || l.contains("window.") || l.contains("new Promise"),
        3.0,
    );
    add(s, l.contains("===") || l.contains("!=="), 3.0);
    add(
        s,
        l.starts_with("});") || l.starts_with("})") || l == "};",
        2.0,
    );
    add(
        s,
        l.starts_with("import ") && (l.contains(" from '") || l.contains(" from \"")),
        4.0,
    );
    add(
        s,
        l.starts_with("export default")
            || l.starts_with("export function")
            || l.starts_with("export const"),
        4.0,
    );
    add(
        s,
        l.starts_with("function ") && l.contains('(') && l.ends_with('{') && !l.contains('-'),
        1.5,
    );
    add(s, l.starts_with("//") || l.starts_with("/*"), 0.5);
    add(s, l.contains("undefined") || l.contains("this."), 1.0);
    add(s, l.ends_with(';') && !l.starts_with('#'), 0.2);
}

fn score_powershell(l: &str, lower: &str, s: &mut f64) {
    add(
        s,
        lower.starts_with("param(") || lower.starts_with("param ("),
        3.0,
    );
    add(
        s,
        lower.contains("[cmdletbinding(") || lower.contains("[parameter("),
        5.0,
    );
    add(
        s,
        lower.contains("$psscriptroot")
            || lower.contains("$env:")
            || lower.contains("$psversiontable"),
        5.0,
    );
    add(
        s,
        lower.contains("$null") || lower.contains("$true") || lower.contains("$false"),
        3.0,
    );
    add(
        s,
        lower.contains("[string]") || lower.contains("[int]") || lower.contains("[switch]"),
        3.0,
    );
    add(
        s,
        lower.contains(" -erroraction ") || lower.contains("-eq $") || lower.contains(" -ne $"),
        2.0,
    );
    add(
        s,
        lower.contains(" -like ") || lower.contains(" -match ") || lower.contains(" -notmatch "),
        2.0,
    );
    add(s, lower.starts_with("<#") || lower.starts_with("#>"), 3.0);
    add(s, l.contains("@{"), 1.0);
    add(
        s,
        l.starts_with('$') && l.contains(" = ") && !l.starts_with("$("),
        1.5,
    );
    add(
        s,
        l.contains("$_.") || l.contains("| %") || l.contains("| ?"),
        1.5,
    );
    add(s, has_cmdlet(l), 2.5);
}

/// A `Verb-Noun` cmdlet with one of the common approved verbs.
fn has_cmdlet(l: &str) -> bool {
    const VERBS: [&str; 22] = [
        "Get-",
        "Set-",
        "New-",
        "Write-",
        "Invoke-",
        "Start-",
        "Stop-",
        "Import-",
        "Test-",
        "Join-",
        "Remove-",
        "Add-",
        "Out-",
        "Select-",
        "Where-",
        "ForEach-",
        "Convert",
        "Export-",
        "Copy-",
        "Split-",
        "Resolve-",
        "Register-",
    ];
    VERBS.iter().any(|v| {
        l.match_indices(v).any(|(i, m)| {
            let before_ok = i == 0 || !l.as_bytes()[i - 1].is_ascii_alphanumeric();
            let after = l[i + m.len()..].chars().next();
            before_ok && after.is_some_and(|c| c.is_ascii_uppercase())
        })
    })
}

fn score_python(raw: &str, l: &str, s: &mut f64) {
    add(
        s,
        l.starts_with("def ") && l.contains('(') && l.ends_with(':'),
        3.0,
    );
    add(
        s,
        l.starts_with("async def ") || (l.starts_with("class ") && l.ends_with(':')),
        3.0,
    );
    add(s, l.starts_with("from ") && l.contains(" import "), 3.0);
    add(
        s,
        l.starts_with("import ") && !l.contains(" from ") && !l.ends_with(';'),
        2.0,
    );
    add(s, l.starts_with("if __name__ =="), 5.0);
    add(
        s,
        l.starts_with("elif ") || l == "try:" || l.starts_with("except") || l == "else:",
        3.0,
    );
    add(
        s,
        l.starts_with("for ") && l.contains(" in ") && l.ends_with(':'),
        2.0,
    );
    add(
        s,
        (l.starts_with("if ") || l.starts_with("while ")) && l.ends_with(':'),
        1.5,
    );
    add(s, l.starts_with("\"\"\"") || l.starts_with("'''"), 2.0);
    add(
        s,
        l.starts_with("raise ") || l.starts_with("with ") && l.ends_with(':'),
        2.0,
    );
    add(
        s,
        l.contains("self.") || l.contains("self,") || l.contains("(self)"),
        1.0,
    );
    add(
        s,
        l.starts_with('@')
            && l[1..].starts_with(|c: char| c.is_ascii_alphabetic())
            && !l.contains(' '),
        1.0,
    );
    add(
        s,
        l.contains(" None") || l.contains(" True") || l.contains(" False"),
        0.5,
    );
    add(
        s,
        raw.starts_with("    ") && !l.ends_with(';') && !l.ends_with('{'),
        0.1,
    );
}
