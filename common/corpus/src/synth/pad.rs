//! Bulky but realistic filler (embedded manifests, lookup tables, translation strings)
//! that pushes a script past 16 KB, longer than a small model's context.

use rand::Rng;

use super::names::{self, pick, R};
use automaldesc_common::types::Language;

fn sha(r: &mut R) -> String {
    format!(
        "{:016x}{:016x}{:016x}{:016x}",
        r.random::<u64>(),
        r.random::<u64>(),
        r.random::<u64>(),
        r.random::<u64>()
    )
}

const REGIONS: &[&str] = &[
    "us-east",
    "us-west",
    "eu-central",
    "eu-west",
    "ap-south",
    "ap-northeast",
    "sa-east",
    "ca-central",
    "af-south",
    "me-south",
];

const PHRASES: &[&str] = &[
    "Save changes",
    "Cancel",
    "Your session has expired",
    "Loading",
    "Invalid e-mail address",
    "Password must contain at least 8 characters",
    "Upload complete",
    "Network error, retrying",
    "Select a file",
    "Search results",
    "No items found",
    "Delete this item?",
    "Settings saved",
    "Sign in",
    "Sign out",
    "Terms of service",
    "Privacy policy",
    "Download report",
];

/// Insert about `target` bytes of padding into `content` (after a shebang or `@echo off`
/// line); returns a noun phrase describing it for the summary and the bytes inserted.
pub(crate) fn insert(
    lang: Language,
    content: &mut String,
    r: &mut R,
    target: usize,
) -> (String, usize) {
    let mut block = String::new();
    let mut rows = 0usize;
    let what;
    match lang {
        Language::Bash => {
            what = "checksum manifest held in a here-document";
            block.push_str("# Release manifest: sha256 and path of every shipped file\nread -r -d '' MANIFEST <<'EOF' || true\n");
            while block.len() < target {
                let p = format!(
                    "{}/{}/{}_{}.{}",
                    pick(r, &["lib", "share", "bin", "etc", "doc"]),
                    names::product(r),
                    names::word(r),
                    rows,
                    pick(r, &["so", "conf", "txt", "dat", "json"])
                );
                block.push_str(&format!("{}  {p}\n", sha(r)));
                rows += 1;
            }
            block.push_str("EOF\n\n");
        }
        Language::Batch => {
            what = "table of package definitions set as environment variables";
            block.push_str("rem ---- package table (name|version|sha256) ----\n");
            while block.len() < target {
                block.push_str(&format!(
                    "set \"PKG_{rows}={}-{}|{}|{}\"\n",
                    names::product(r),
                    names::word(r),
                    names::version(r),
                    sha(r)
                ));
                rows += 1;
            }
            block.push('\n');
        }
        Language::Javascript => {
            what = "translation dictionary of user-interface strings";
            block.push_str("var I18N_STRINGS = {\n");
            while block.len() < target {
                let loc = pick(
                    r,
                    &["en", "de", "fr", "es", "it", "pt", "nl", "pl", "sv", "ja"],
                );
                block.push_str(&format!(
                    "  \"{loc}.{}.{rows}\": \"{} ({})\",\n",
                    names::camel(r),
                    pick(r, PHRASES),
                    pick(r, REGIONS)
                ));
                rows += 1;
            }
            block.push_str("  \"_end\": \"\"\n};\n\n");
        }
        Language::Powershell => {
            what = "CSV inventory embedded in a here-string";
            block.push_str("$InventoryCsv = @'\nHostName,Region,Owner,AssetTag,Sha256\n");
            while block.len() < target {
                block.push_str(&format!(
                    "{}-{:04},{},{},AT{:06},{}\n",
                    pick(r, &["WS", "SRV", "LT", "VM", "DC"]),
                    r.random_range(0..10000),
                    pick(r, REGIONS),
                    names::user(r),
                    r.random_range(0..1_000_000),
                    sha(r)
                ));
                rows += 1;
            }
            block.push_str("'@\n\n");
        }
        Language::Python => {
            what = "lookup table of file digests defined as a module-level dictionary";
            block.push_str("KNOWN_DIGESTS = {\n");
            while block.len() < target {
                block.push_str(&format!(
                    "    \"{}/{}_{rows}.{}\": \"{}\",\n",
                    names::word(r),
                    names::snake(r),
                    pick(r, &["py", "json", "csv", "bin", "yaml"]),
                    sha(r)
                ));
                rows += 1;
            }
            block.push_str("}\n\n");
        }
    }
    let first_is_header = content
        .lines()
        .next()
        .map(|l| l.starts_with("#!") || l.to_ascii_lowercase().starts_with("@echo"))
        .unwrap_or(false);
    let at = if first_is_header {
        content.find('\n').map(|i| i + 1).unwrap_or(content.len())
    } else {
        0
    };
    content.insert_str(at, &block);
    (format!("a {what} with {rows} entries"), block.len())
}
