use std::collections::BTreeMap;

use super::obfuscate::{b64decode, b64encode, utf16le};
use super::*;

fn cfg(scale: f64) -> SynthConfig {
    SynthConfig {
        scale,
        ..SynthConfig::default()
    }
}

/// Seed and test scripts at full scale: they come first in the generation order.
fn labelled_full() -> Vec<SynthScript> {
    generate(&SynthConfig::default())
        .take_while(|s| s.split != Split::Unlabelled)
        .collect()
}

#[test]
fn plan_matches_published_totals() {
    let p = plan(&SynthConfig::default());
    assert_eq!(p.iter().map(|c| c.count).sum::<u64>(), 161_662);
    let want: [(Language, u64, u64, u64); 5] = [
        (Language::Bash, 36_823, 807, 166),
        (Language::Batch, 7_838, 820, 167),
        (Language::Javascript, 65_000, 855, 234),
        (Language::Powershell, 29_834, 656, 166),
        (Language::Python, 17_631, 498, 167),
    ];
    for (lang, unl, test, seed) in want {
        let sum = |split: Split| -> u64 {
            p.iter()
                .filter(|c| c.language == lang && c.split == split)
                .map(|c| c.count)
                .sum()
        };
        assert_eq!(sum(Split::Unlabelled), unl, "{lang} unlabelled");
        assert_eq!(sum(Split::Test), test, "{lang} test");
        assert_eq!(sum(Split::Seed), seed, "{lang} seed");
    }
    let seed_benign: u64 = p
        .iter()
        .filter(|c| c.split == Split::Seed && c.label == Label::Benign)
        .map(|c| c.count)
        .sum();
    assert_eq!(seed_benign, 352);
    assert_eq!(total(&SynthConfig::default()), 161_662);
}

#[test]
fn plan_matches_what_generate_emits() {
    let c = cfg(0.02);
    let mut counts: BTreeMap<(Split, Language, Label), u64> = BTreeMap::new();
    let mut n = 0u64;
    for s in generate(&c) {
        assert_eq!(s.index, n);
        n += 1;
        *counts.entry((s.split, s.language, s.label)).or_default() += 1;
    }
    for cell in plan(&c) {
        assert!(cell.count >= 1);
        assert_eq!(
            counts
                .get(&(cell.split, cell.language, cell.label))
                .copied()
                .unwrap_or(0),
            cell.count
        );
    }
    assert_eq!(n, total(&c));
    assert_eq!(total(&cfg(0.0)), 0);
    assert_eq!(generate(&cfg(0.0)).count(), 0);
}

#[test]
fn generation_is_deterministic_and_random_access() {
    let c = cfg(0.01);
    let a: Vec<SynthScript> = generate(&c).collect();
    let b: Vec<SynthScript> = generate(&c).collect();
    assert_eq!(a, b);
    let other: Vec<SynthScript> = generate(&SynthConfig { seed: 7, ..c }).collect();
    assert_eq!(a.len(), other.len());
    let differing = a
        .iter()
        .zip(&other)
        .filter(|(x, y)| x.content != y.content)
        .count();
    assert!(
        differing > a.len() * 9 / 10,
        "only {differing} of {} differ",
        a.len()
    );
    for i in [0, 1, 17, a.len() as u64 / 2, a.len() as u64 - 1] {
        assert_eq!(generate_one(&c, i), a[i as usize]);
    }
}

#[test]
fn family_breadth_and_coverage() {
    let fams = families();
    let benign = fams.iter().filter(|f| f.label == Label::Benign).count();
    let malicious = fams.iter().filter(|f| f.label == Label::Malicious).count();
    assert!(benign >= 25, "{benign} benign families");
    assert!(malicious >= 25, "{malicious} malicious families");
    for lang in Language::ALL {
        for label in [Label::Benign, Label::Malicious] {
            let n = fams
                .iter()
                .filter(|f| f.label == label && f.languages.contains(&lang))
                .count();
            assert!(n >= 5, "{lang} {label:?}: {n}");
        }
    }
    let mut seen: BTreeMap<(&str, Label, Language), u64> = BTreeMap::new();
    for s in generate(&cfg(0.05)) {
        *seen.entry((s.family, s.label, s.language)).or_default() += 1;
    }
    for f in &fams {
        for l in &f.languages {
            assert!(
                seen.contains_key(&(f.name, f.label, *l)),
                "{} ({l}) never generated",
                f.name
            );
        }
    }
}

#[test]
fn obfuscation_share_and_real_payloads() {
    let all = labelled_full();
    let mal_test: Vec<&SynthScript> = all
        .iter()
        .filter(|s| s.split == Split::Test && s.label == Label::Malicious)
        .collect();
    let obf = mal_test.iter().filter(|s| s.obfuscated).count();
    let share = obf as f64 / mal_test.len() as f64;
    assert!((0.06..=0.16).contains(&share), "obfuscated share {share}");
    assert!(all
        .iter()
        .filter(|s| s.label == Label::Benign)
        .all(|s| !s.obfuscated));

    let commands = [
        "http",
        "curl",
        "reg ",
        "New-Object",
        "Invoke-",
        "import ",
        "require(",
        "echo",
        "set ",
        "Set-",
        "socket",
        "wget",
        "powershell",
        "Get-",
        "$",
        "/bin/",
        "nc ",
    ];
    let mut decoded_ok = 0;
    let unl = generate(&cfg(0.05)).filter(|s| s.obfuscated);
    for s in all.iter().filter(|s| s.obfuscated).cloned().chain(unl) {
        let text = String::from_utf8_lossy(&s.content).to_string();
        let payload = if let Some(p) = text.split("-EncodedCommand ").nth(1) {
            let bytes = b64decode(p.trim()).expect("EncodedCommand is valid base64");
            let units: Vec<u16> = bytes
                .chunks(2)
                .map(|c| u16::from_le_bytes([c[0], *c.get(1).unwrap_or(&0)]))
                .collect();
            Some(String::from_utf16(&units).expect("UTF-16LE"))
        } else if text.contains("| base64 -d | bash") || text.contains("exec(base64.b64decode(") {
            let b = text.split('\'').nth(1).unwrap_or("");
            Some(String::from_utf8(b64decode(b).expect("base64")).expect("utf8"))
        } else {
            None
        };
        if let Some(p) = payload {
            assert!(
                commands.iter().any(|c| p.contains(c)),
                "decoded payload lacks commands: {p}"
            );
            assert!(p.trim().len() >= 30, "decoded payload too short: {p}");
            decoded_ok += 1;
        }
    }
    assert!(
        decoded_ok >= 10,
        "only {decoded_ok} decodable base64 payloads checked"
    );
}

#[test]
fn encoders_round_trip() {
    let text = "Write-Host 'hello'; Get-Process | Select -First 3\n";
    assert_eq!(
        b64decode(&b64encode(text.as_bytes())).unwrap(),
        text.as_bytes()
    );
    assert_eq!(b64encode(b"ab"), "YWI=");
    assert_eq!(b64encode(&utf16le("ab")), "YQBiAA==");
    let mut r = script_rng(1, 2);
    for lang in Language::ALL {
        for _ in 0..20 {
            let o = obfuscate::wrap(lang, "echo one\necho two\n", &mut r);
            assert!(
                !o.content.contains("echo one"),
                "{lang}: payload left in clear text"
            );
            assert!(o.iocs.iter().all(|i| o.content.contains(i.as_str())));
        }
    }
}

fn words(s: &str) -> usize {
    s.split_whitespace().count()
}

#[test]
fn summaries_are_grounded_and_well_formed() {
    let all = labelled_full();
    assert_eq!(all.len(), 900 + 3636);
    let forbidden = [
        "malicious",
        "benign",
        "label",
        "seems",
        "possibly",
        "might",
        "perhaps",
        "likely",
        "appears to",
    ];
    let mut in_range = 0;
    for s in &all {
        let sum = s
            .summary
            .as_deref()
            .expect("seed and test scripts have summaries");
        let paras = sum.split("\n\n").count();
        assert!((3..=4).contains(&paras), "{paras} paragraphs: {sum}");
        let w = words(sum);
        if (170..=280).contains(&w) {
            in_range += 1;
        }
        assert!(
            (120..=330).contains(&w),
            "{w} words for {}: {sum}",
            s.family
        );
        let lower = sum.to_lowercase();
        for f in forbidden {
            assert!(!lower.contains(f), "forbidden {f:?} in {sum}");
        }
        assert!(!sum.contains("```") && !sum.contains("**"));
        let content = String::from_utf8_lossy(&s.content);
        let grounded = sum
            .split_whitespace()
            .map(|t| t.trim_matches(|c: char| ",.;:()\"'".contains(c)))
            .filter(|t| {
                t.len() >= 4
                    && t.chars()
                        .any(|c| c.is_ascii_digit() || "./\\-_:%$".contains(c))
            })
            .any(|t| content.contains(t));
        assert!(
            grounded,
            "no concrete token of the script in summary of {}: {sum}",
            s.family
        );
        assert!(!s.behaviours.is_empty());
        assert!(s.noisy_label.is_none());
    }
    let mut ws: Vec<usize> = all
        .iter()
        .filter_map(|s| s.summary.as_deref())
        .map(words)
        .collect();
    ws.sort_unstable();
    println!(
        "summary words: min {} p10 {} median {} p90 {} max {}",
        ws[0],
        ws[ws.len() / 10],
        ws[ws.len() / 2],
        ws[ws.len() * 9 / 10],
        ws[ws.len() - 1]
    );
    assert!(
        in_range * 100 >= all.len() * 85,
        "{in_range} of {} summaries in 170-280 words",
        all.len()
    );
    // Phrasing varies: the first sentences are not one template.
    let openers: std::collections::BTreeSet<String> = all
        .iter()
        .filter_map(|s| s.summary.as_ref())
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .collect();
    assert!(
        openers.len() > 30,
        "only {} distinct openers",
        openers.len()
    );
}

#[test]
fn noisy_labels_follow_the_configured_rate() {
    let c = SynthConfig {
        scale: 0.1,
        noisy_label_error: 0.2,
        seed: 3,
        unlabelled_scale: None,
        seed_scale: None,
    };
    let mut n = 0;
    let mut flipped = 0;
    for s in generate(&c).filter(|s| s.split == Split::Unlabelled) {
        let nl = s
            .noisy_label
            .expect("unlabelled scripts carry a noisy label");
        assert!(s.summary.is_none());
        n += 1;
        if nl != s.label {
            flipped += 1;
        }
    }
    let rate = flipped as f64 / n as f64;
    assert!((rate - 0.2).abs() < 0.015, "flip rate {rate} over {n}");
    let zero = SynthConfig {
        noisy_label_error: 0.0,
        ..c
    };
    assert!(generate(&zero)
        .filter(|s| s.split == Split::Unlabelled)
        .take(2000)
        .all(|s| s.noisy_label == Some(s.label)));
}

#[test]
fn sizes_spread_past_sixteen_kilobytes() {
    let sizes: Vec<usize> = generate(&cfg(0.05)).map(|s| s.content.len()).collect();
    let big = sizes.iter().filter(|&&n| n > 16 * 1024).count();
    let small = sizes.iter().filter(|&&n| n < 1024).count();
    let share = big as f64 / sizes.len() as f64;
    assert!(share > 0.02 && share < 0.10, "share over 16 KB: {share}");
    assert!(small > 0, "no script under 1 KB");
    assert!(sizes.iter().any(|&n| n > 4096 && n < 16 * 1024));
}

#[test]
#[ignore]
fn time_full_generation() {
    let t = std::time::Instant::now();
    let n = generate(&SynthConfig::default()).count();
    let el = t.elapsed();
    println!("generated {n} scripts in {:.2?}", el);
    assert_eq!(n, 161_662);
}

#[test]
#[ignore]
fn print_examples() {
    let c = SynthConfig::default();
    if std::env::var("SYNTH_LIST").is_ok() {
        for s in generate(&c).take_while(|s| s.split != Split::Unlabelled) {
            println!(
                "{} {} {} {:?} {} obf={} bytes={}",
                s.index,
                s.split,
                s.language,
                s.label,
                s.family,
                s.obfuscated,
                s.content.len()
            );
        }
        return;
    }
    let want = std::env::var("SYNTH_EXAMPLES").unwrap_or_default();
    for i in want.split(',').filter_map(|s| s.trim().parse::<u64>().ok()) {
        let s = generate_one(&c, i);
        println!(
            "===== index {} split {} {} {:?} family {} obfuscated {} =====\n{}\n----- summary -----\n{}\n----- behaviours: {:?}\n",
            s.index,
            s.split,
            s.language,
            s.label,
            s.family,
            s.obfuscated,
            String::from_utf8_lossy(&s.content),
            s.summary.unwrap_or_default(),
            s.behaviours
        );
    }
}

#[test]
#[ignore]
fn print_families() {
    for f in families() {
        let langs: Vec<&str> = f.languages.iter().map(|l| l.as_str()).collect();
        println!(
            "| {:?} | {} | {} | {} |",
            f.label,
            f.name,
            langs.join(", "),
            f.description
        );
    }
}

/// Writes scripts of a small-scale corpus to $SYNTH_DUMP for external syntax checks.
#[test]
#[ignore]
fn dump_scripts() {
    let Ok(dir) = std::env::var("SYNTH_DUMP") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir).expect("create dump dir");
    for s in generate(&cfg(0.01)) {
        let ext = match s.language {
            Language::Bash => "sh",
            Language::Batch => "bat",
            Language::Javascript => "js",
            Language::Powershell => "ps1",
            Language::Python => "py",
        };
        let name = format!(
            "{:06}-{}-{}.{ext}",
            s.index,
            s.family,
            if s.obfuscated { "obf" } else { "plain" }
        );
        std::fs::write(dir.join(name), &s.content).expect("write script");
    }
}

#[test]
fn split_scales_override_the_scale_of_their_split_only() {
    let total = |c: &SynthConfig, split: Split| -> u64 {
        plan(c)
            .iter()
            .filter(|x| x.split == split)
            .map(|x| x.count)
            .sum()
    };
    let base = cfg(0.01);
    let custom = SynthConfig {
        unlabelled_scale: Some(0.0002),
        seed_scale: Some(0.03),
        ..base
    };
    assert_eq!(total(&custom, Split::Test), total(&base, Split::Test));
    // Published seed cells times 0.03, rounded, at least 1 each.
    assert_eq!(total(&custom, Split::Seed), 27);
    assert!(total(&custom, Split::Unlabelled) < total(&base, Split::Unlabelled) / 10);
}
