//! Deterministic generator of realistic scripts with ground truth.
//!
//! The corpus mirrors the published dataset's shape: five languages, three splits
//! (seed, test, unlabelled) and the per-language counts of the paper. Every script is
//! produced from its own RNG, a ChaCha8 stream seeded by `sha256("automaldesc-synth" ||
//! seed || index)`, so `generate_one(cfg, i)` is random access and two runs with the same
//! [`SynthConfig`] are byte-identical. Scripts are built from family templates (see
//! [`families`]); about 10% of malicious scripts in every split are wrapped in a real
//! obfuscation layer, a few percent of all scripts carry bulky but realistic padding so
//! they exceed 16 KB, and seed and test scripts get a reference technical summary.

mod bash;
mod bash_common;
mod bash_mal;
mod batch;
mod batch_mal;
mod extras;
mod javascript;
mod javascript_mal;
mod names;
mod obfuscate;
mod pad;
mod powershell;
mod powershell_mal;
mod python;
mod python_impact;
mod python_mal;
mod summary;
mod summary_facts;
#[cfg(test)]
mod tests;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

use automaldesc_common::types::{Label, Language, Split};
use names::R;

/// Knobs of the generator.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SynthConfig {
    /// Master seed; each script's RNG is derived from (seed, index).
    pub seed: u64,
    /// Multiplier on the published counts (1.0 = 161,662 scripts).
    pub scale: f64,
    /// Probability that an unlabelled script's `noisy_label` is the flipped ground truth.
    pub noisy_label_error: f64,
    /// Multiplier on the unlabelled split alone (default: `scale`), for small runs with a
    /// usable seed and test split.
    pub unlabelled_scale: Option<f64>,
    /// Multiplier on the seed split alone (default: `scale`).
    pub seed_scale: Option<f64>,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            seed: 0,
            scale: 1.0,
            noisy_label_error: 0.08,
            unlabelled_scale: None,
            seed_scale: None,
        }
    }
}

/// One generated script and everything known about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SynthScript {
    /// Position in the generation order, 0..total.
    pub index: u64,
    pub split: Split,
    pub language: Language,
    /// Ground truth.
    pub label: Label,
    /// Family name, e.g. "reverse-shell" or "log-rotation".
    pub family: &'static str,
    /// The script bytes.
    pub content: Vec<u8>,
    /// Only for `Split::Unlabelled`: the ground truth flipped with probability `noisy_label_error`.
    pub noisy_label: Option<Label>,
    /// Only for seed and test: the reference technical summary.
    pub summary: Option<String>,
    /// Short behaviour names with ATT&CK ids where they apply (filled for every split).
    pub behaviours: Vec<String>,
    /// Whether an obfuscation layer wraps the real logic.
    pub obfuscated: bool,
}

/// How many scripts one (split, language, label) cell holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CellCount {
    pub split: Split,
    pub language: Language,
    pub label: Label,
    pub count: u64,
}

/// A family as reported to callers: one name may be implemented in several languages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FamilyInfo {
    pub name: &'static str,
    pub label: Label,
    pub languages: Vec<Language>,
    pub description: &'static str,
}

/// Published counts at scale 1.0 as `(split, language, benign, malicious)`.
///
/// The per-language split totals are the paper's. The paper gives the benign/malicious
/// ratio only for the seed (352 benign / 548 malicious); it is spread here as 65 benign per
/// language and 92 for JavaScript. For test we chose about 40% benign in every language,
/// and for unlabelled a wild-crawl mix of 45-60% benign that varies by language (60% bash
/// and python, 50% batch, 55% JavaScript, 45% PowerShell).
pub const PUBLISHED_CELLS: [(Split, Language, u64, u64); 15] = [
    (Split::Seed, Language::Bash, 65, 101),
    (Split::Seed, Language::Batch, 65, 102),
    (Split::Seed, Language::Javascript, 92, 142),
    (Split::Seed, Language::Powershell, 65, 101),
    (Split::Seed, Language::Python, 65, 102),
    (Split::Test, Language::Bash, 323, 484),
    (Split::Test, Language::Batch, 328, 492),
    (Split::Test, Language::Javascript, 342, 513),
    (Split::Test, Language::Powershell, 262, 394),
    (Split::Test, Language::Python, 199, 299),
    (Split::Unlabelled, Language::Bash, 22_094, 14_729),
    (Split::Unlabelled, Language::Batch, 3_919, 3_919),
    (Split::Unlabelled, Language::Javascript, 35_750, 29_250),
    (Split::Unlabelled, Language::Powershell, 13_425, 16_409),
    (Split::Unlabelled, Language::Python, 10_579, 7_052),
];

/// Share of malicious scripts wrapped in an obfuscation layer.
pub const OBFUSCATED_SHARE: f64 = 0.10;
/// Share of scripts that receive bulky padding (most of them then exceed 16 KB).
pub const PADDED_SHARE: f64 = 0.04;
/// Share of scripts (either label) that get a vendor-style copyright and changelog header.
pub const BANNER_SHARE: f64 = 0.2;
/// Share of scripts that receive a moderate embedded table (2-11 KB), spreading sizes.
pub const MEDIUM_PADDED_SHARE: f64 = 0.18;

fn scaled(count: u64, scale: f64) -> u64 {
    if count == 0 || scale <= 0.0 || !scale.is_finite() {
        return 0;
    }
    ((count as f64 * scale).round() as u64).max(1)
}

/// How many scripts of each cell `generate` emits, in generation order
/// (seed, test, unlabelled; languages in `Language::ALL` order; benign before malicious).
pub fn plan(cfg: &SynthConfig) -> Vec<CellCount> {
    let mut out = Vec::with_capacity(30);
    for (split, language, benign, malicious) in PUBLISHED_CELLS {
        for (label, n) in [(Label::Benign, benign), (Label::Malicious, malicious)] {
            out.push(CellCount {
                split,
                language,
                label,
                count: scaled(
                    n,
                    match split {
                        Split::Unlabelled => cfg.unlabelled_scale.unwrap_or(cfg.scale),
                        Split::Seed => cfg.seed_scale.unwrap_or(cfg.scale),
                        _ => cfg.scale,
                    },
                ),
            });
        }
    }
    out
}

/// A family implementation in one language.
pub(crate) struct Family {
    pub name: &'static str,
    pub description: &'static str,
    pub gen: fn(&mut R) -> Draft,
}

/// What a family template produces: the script plus the facts its summary is built from.
#[derive(Default)]
pub(crate) struct Draft {
    pub content: String,
    /// Verb phrase, e.g. "rotates the logs under /var/log/app".
    pub purpose: String,
    /// Ordered verb phrases describing execution, each with concrete values.
    pub steps: Vec<String>,
    /// Full sentences about the effect on the system.
    pub effects: Vec<String>,
    pub behaviours: Vec<String>,
    /// Concrete tokens (hosts, paths, ports, commands) that occur verbatim in `content`.
    pub iocs: Vec<String>,
}

fn cell_families(language: Language, label: Label) -> &'static [Family] {
    match (language, label) {
        (Language::Bash, Label::Benign) => bash::FAMILIES,
        (Language::Bash, Label::Malicious) => bash_mal::FAMILIES,
        (Language::Batch, Label::Benign) => batch::FAMILIES,
        (Language::Batch, Label::Malicious) => batch_mal::FAMILIES,
        (Language::Javascript, Label::Benign) => javascript::FAMILIES,
        (Language::Javascript, Label::Malicious) => javascript_mal::FAMILIES,
        (Language::Powershell, Label::Benign) => powershell::FAMILIES,
        (Language::Powershell, Label::Malicious) => powershell_mal::FAMILIES,
        (Language::Python, Label::Benign) => python::FAMILIES,
        (Language::Python, Label::Malicious) => python_mal::FAMILIES,
    }
}

/// Every family with its label, the languages that implement it and a description.
pub fn families() -> Vec<FamilyInfo> {
    let mut out: Vec<FamilyInfo> = Vec::new();
    for label in [Label::Benign, Label::Malicious] {
        for lang in Language::ALL {
            for f in cell_families(lang, label) {
                match out
                    .iter_mut()
                    .find(|i| i.name == f.name && i.label == label)
                {
                    Some(info) => info.languages.push(lang),
                    None => out.push(FamilyInfo {
                        name: f.name,
                        label,
                        languages: vec![lang],
                        description: f.description,
                    }),
                }
            }
        }
    }
    out
}

fn script_rng(seed: u64, index: u64) -> ChaCha8Rng {
    let mut h = Sha256::new();
    h.update(b"automaldesc-synth");
    h.update(seed.to_le_bytes());
    h.update(index.to_le_bytes());
    let digest: [u8; 32] = h.finalize().into();
    ChaCha8Rng::from_seed(digest)
}

fn build(cfg: &SynthConfig, cell: &CellCount, offset: u64, index: u64) -> SynthScript {
    let mut r = script_rng(cfg.seed, index);
    let flip = r.random_bool(cfg.noisy_label_error.clamp(0.0, 1.0));
    let fams = cell_families(cell.language, cell.label);
    // The first scripts of a cell walk through every family once, the rest draw at random.
    let fam = if (offset as usize) < fams.len() {
        &fams[offset as usize]
    } else {
        &fams[r.random_range(0..fams.len())]
    };
    let obfuscate = cell.label == Label::Malicious && r.random_bool(OBFUSCATED_SHARE);
    let pad_roll: f64 = r.random();
    let pad_target = if pad_roll < PADDED_SHARE {
        Some(r.random_range(17_000..42_000))
    } else if pad_roll < PADDED_SHARE + MEDIUM_PADDED_SHARE {
        Some(r.random_range(2_000..11_000))
    } else {
        None
    };

    let mut draft = (fam.gen)(&mut r);
    let helper_share = match cell.label {
        Label::Benign => 0.45,
        Label::Malicious => 0.15,
    };
    if r.random_bool(helper_share) {
        extras::add_helpers(cell.language, &mut draft.content, &mut r);
    }
    if r.random_bool(BANNER_SHARE) {
        extras::add_banner(cell.language, &mut draft.content, &mut r);
    }
    let pad_note = pad_target.map(|t| pad::insert(cell.language, &mut draft.content, &mut r, t));
    let inner_lines = draft.content.lines().count();
    let obf = if obfuscate {
        Some(obfuscate::wrap(cell.language, &draft.content, &mut r))
    } else {
        None
    };
    let content = match &obf {
        Some(o) => o.content.clone(),
        None => draft.content.clone(),
    };
    let summary = match cell.split {
        Split::Seed | Split::Test => Some(summary::write(
            &mut r,
            &summary::Input {
                language: cell.language,
                label: cell.label,
                description: fam.description,
                draft: &draft,
                content: &content,
                inner_lines,
                obf: obf.as_ref(),
                pad_note: pad_note.as_ref().map(|(s, n)| (s.as_str(), *n)),
            },
        )),
        Split::Unlabelled => None,
    };
    let noisy_label = match cell.split {
        Split::Unlabelled => Some(match (cell.label, flip) {
            (l, false) => l,
            (Label::Benign, true) => Label::Malicious,
            (Label::Malicious, true) => Label::Benign,
        }),
        _ => None,
    };
    let mut behaviours = draft.behaviours;
    if let Some(o) = &obf {
        behaviours.push(o.behaviour.to_string());
    }
    SynthScript {
        index,
        split: cell.split,
        language: cell.language,
        label: cell.label,
        family: fam.name,
        content: content.into_bytes(),
        noisy_label,
        summary,
        behaviours,
        obfuscated: obf.is_some(),
    }
}

/// Total number of scripts `generate` emits for this config.
pub fn total(cfg: &SynthConfig) -> u64 {
    plan(cfg).iter().map(|c| c.count).sum()
}

fn locate(cells: &[CellCount], index: u64) -> Option<(&CellCount, u64)> {
    let mut start = 0;
    for c in cells {
        if index < start + c.count {
            return Some((c, index - start));
        }
        start += c.count;
    }
    None
}

/// Streams every script of the plan in order; deterministic for a given config.
pub fn generate(cfg: &SynthConfig) -> impl Iterator<Item = SynthScript> {
    let cfg = *cfg;
    let cells = plan(&cfg);
    cells
        .clone()
        .into_iter()
        .scan(0u64, |start, cell| {
            let s = *start;
            *start += cell.count;
            Some((s, cell))
        })
        .flat_map(move |(start, cell)| {
            (0..cell.count).map(move |off| build(&cfg, &cell, off, start + off))
        })
}

/// The `index`-th script of `generate(cfg)`, computed directly.
///
/// # Panics
/// If `index >= total(cfg)`.
pub fn generate_one(cfg: &SynthConfig, index: u64) -> SynthScript {
    let cells = plan(cfg);
    match locate(&cells, index) {
        Some((cell, off)) => build(cfg, cell, off, index),
        None => panic!(
            "script index {index} is beyond the plan's total {}",
            total(cfg)
        ),
    }
}
