//! Reference summaries: 3-4 paragraphs of technical analysis, about 200-250 words, built
//! from the concrete facts a family template recorded, with varied phrasing and order.

use rand::Rng;

use super::names::{pick, R};
use super::obfuscate::Obf;
use super::summary_facts::{
    attack_ids, functions, list, lower_first, runtime, structure, tools_used,
};
use super::Draft;
use automaldesc_common::types::{Label, Language};

pub(crate) struct Input<'a> {
    pub language: Language,
    pub label: Label,
    pub description: &'static str,
    pub draft: &'a Draft,
    pub content: &'a str,
    pub inner_lines: usize,
    pub obf: Option<&'a Obf>,
    /// Description of inserted padding and its size in bytes.
    pub pad_note: Option<(&'a str, usize)>,
}

fn lang_name(r: &mut R, l: Language) -> &'static str {
    match l {
        Language::Bash => pick(r, &["Bash", "shell", "Bash shell"]),
        Language::Batch => pick(r, &["batch", "Windows batch", "cmd.exe batch"]),
        Language::Javascript => "JavaScript",
        Language::Powershell => "PowerShell",
        Language::Python => "Python",
    }
}

const SYNONYMS: &[(&str, &[&str])] = &[
    (
        "downloads",
        &["downloads", "fetches", "retrieves", "pulls down"],
    ),
    ("writes", &["writes", "saves", "stores"]),
    ("executes", &["executes", "runs", "launches"]),
    ("creates", &["creates", "sets up", "establishes"]),
    ("deletes", &["deletes", "removes", "erases"]),
    ("sends", &["sends", "transmits", "posts"]),
    ("checks", &["checks", "verifies", "tests"]),
    ("reads", &["reads", "loads"]),
    ("starts", &["starts", "spawns", "launches"]),
];

fn vary(r: &mut R, s: &str) -> String {
    let mut out = Vec::new();
    for w in s.split(' ') {
        match SYNONYMS.iter().find(|(k, _)| *k == w) {
            Some((_, alts)) => out.push(pick(r, alts).to_string()),
            None => out.push(w.to_string()),
        }
    }
    out.join(" ")
}

fn words(paras: &[Vec<String>]) -> usize {
    paras
        .iter()
        .flat_map(|p| p.iter())
        .map(|s| s.split_whitespace().count())
        .sum()
}

/// Compose the reference summary.
pub(crate) fn write(r: &mut R, inp: &Input) -> String {
    let d = inp.draft;
    let ln = lang_name(r, inp.language);
    let n = inp.inner_lines;
    let purpose = vary(r, &d.purpose);
    let mal = inp.label == Label::Malicious;

    // Paragraph 1: overview.
    let mut p1 = Vec::new();
    let mut p1_opt = Vec::new();
    match inp.obf {
        Some(o) => {
            p1.push(match r.random_range(0..3) {
                0 => format!(
                    "The file is a thin {ln} wrapper whose only logic is {}.",
                    o.technique
                ),
                1 => format!(
                    "What is visible in this {ln} file is an obfuscation layer: {}.",
                    o.technique
                ),
                _ => format!("The real code is hidden behind {}.", o.technique),
            });
            p1.push(match r.random_range(0..2) {
                0 => format!("Decoded, the payload is a {n}-line {ln} script that {purpose}."),
                _ => format!(
                    "Once decoded it yields a {ln} script of about {n} lines that {purpose}."
                ),
            });
        }
        None => p1.push(match r.random_range(0..5) {
            0 => format!("This {n}-line {ln} script {purpose}."),
            1 => format!("The {ln} file, {n} lines long, {purpose}."),
            2 => format!("Written in {ln}, this script of roughly {n} lines {purpose}."),
            3 => format!("At {n} lines, the {ln} program {purpose}."),
            _ => format!("This is a {ln} script that {purpose}; it runs to {n} lines."),
        }),
    }
    let (st, st_extra) = structure(r, inp.language, &d.content);
    p1.push(st);
    p1_opt.extend(st_extra);

    // Paragraph 2: execution.
    let mut p2 = Vec::new();
    let k = d.steps.len();
    let mut mids = [0usize, 1, 2, 3, 4, 5];
    for i in (1..mids.len()).rev() {
        let j = r.random_range(0..=i);
        mids.swap(i, j);
    }
    for (i, s) in d.steps.iter().enumerate() {
        let s = vary(r, s);
        let sent = if k == 1 {
            format!("When run, it {s}.")
        } else if i == 0 {
            match r.random_range(0..3) {
                0 => format!("First, it {s}."),
                1 => format!("On launch, the script {s}."),
                _ => format!("Execution begins as the code {s}."),
            }
        } else if i + 1 == k {
            match r.random_range(0..4) {
                0 => format!("Finally, it {s}."),
                1 => format!("As a last step it {s}."),
                2 => format!("The run ends after it {s}."),
                _ => format!("Lastly, the script {s}."),
            }
        } else {
            match mids[(i - 1) % mids.len()] {
                0 => format!("Next, it {s}."),
                1 => format!("It then {s}."),
                2 => format!("After that, the script {s}."),
                3 => format!("Following this, it {s}."),
                4 => format!("The code also {s}."),
                _ => format!("In the next step it {s}."),
            }
        };
        p2.push(sent);
    }

    // Paragraph 3: effects and indicators.
    let mut p3: Vec<String> = d.effects.iter().map(|e| vary(r, e)).collect();
    let mut iocs: Vec<String> = d
        .iocs
        .iter()
        .filter(|i| inp.content.contains(i.as_str()))
        .take(5)
        .cloned()
        .collect();
    if let Some(o) = inp.obf {
        for i in &o.iocs {
            if inp.content.contains(i.as_str()) && !iocs.contains(i) {
                iocs.insert(0, i.clone());
            }
        }
    }
    if !iocs.is_empty() {
        let shown: Vec<String> = iocs
            .iter()
            .map(|i| i.trim_end_matches('(').to_string())
            .collect();
        let l = list(&shown);
        p3.push(match r.random_range(0..4) {
            0 => format!("Concrete artefacts in the file include {l}."),
            1 => format!("Notable strings are {l}."),
            2 => format!("The values worth recording are {l}."),
            _ => format!("Indicators visible in the text: {l}."),
        });
    }
    if inp.obf.is_some() {
        let hidden: Vec<String> = d.iocs.iter().take(3).cloned().collect();
        if !hidden.is_empty() {
            p3.push(match r.random_range(0..2) {
                0 => format!(
                    "Inside the decoded layer the indicators are {}.",
                    list(&hidden)
                ),
                _ => format!("Once decoded, the payload exposes {}.", list(&hidden)),
            });
        }
    }
    let mut p3_opt = Vec::new();
    let mut all_behaviours = d.behaviours.clone();
    if let Some(o) = inp.obf {
        all_behaviours.push(o.behaviour.to_string());
    }
    let ids = attack_ids(&all_behaviours);
    if mal && !ids.is_empty() {
        p3.push(match r.random_range(0..3) {
            0 => format!("In ATT&CK terms this corresponds to {}.", list(&ids)),
            1 => format!("The behaviour maps to MITRE ATT&CK {}.", list(&ids)),
            _ => format!("Relevant ATT&CK techniques are {}.", list(&ids)),
        });
    } else if !mal {
        p3_opt.push(
            pick(
                r,
                &[
                    "Its actions stay within what the task needs.",
                    "The powerful commands it contains serve the task directly and nothing is hidden.",
                    "It neither persists itself nor contacts hosts beyond the ones its job requires.",
                    "Every change it makes is one an administrator would expect from a tool of this kind.",
                ],
            )
            .to_string(),
        );
    }

    // Paragraph 4: closing assessment, padding, size.
    let mut p4 = Vec::new();
    let desc = lower_first(inp.description);
    p4.push(match (mal, r.random_range(0..3)) {
        (true, 0) => format!("Overall, the script is {desc}."),
        (true, 1) => format!("Taken together, this is {desc}, and the concrete hosts and paths above are what defenders should block or hunt for."),
        (true, _) => format!("In short, the file implements {desc}."),
        (false, 0) => format!("In short, it is {desc}, and its size fits that job."),
        (false, 1) => format!("Taken as a whole, it is routine operational code: {desc}."),
        (false, _) => format!("Overall the file is {desc}."),
    });
    if let Some((pn, bytes)) = inp.pad_note {
        let total = d.content.len().max(1);
        let share = bytes * 100 / total;
        let whose = if inp.obf.is_some() {
            "the decoded script's"
        } else {
            "its"
        };
        p4.push(if share >= 50 {
            format!("Most of {whose} {total} bytes are {pn}, placed ahead of the working code and not referenced by it.")
        } else {
            format!("About {share} percent of {whose} {total} bytes are {pn}, data that the working code does not reference.")
        });
    }
    let tools = tools_used(inp.language, &d.content);
    if tools.len() >= 2 {
        p3_opt.push(match r.random_range(0..3) {
            0 => format!("Commands and APIs it relies on include {}.", list(&tools)),
            1 => format!("The work is done with {}.", list(&tools)),
            _ => format!("Its main building blocks are {}.", list(&tools)),
        });
    }
    p1_opt.push(match r.random_range(0..3) {
        0 => format!("It is written for {}.", runtime(inp.language, &d.content)),
        1 => format!("The code targets {}.", runtime(inp.language, &d.content)),
        _ => format!(
            "Its execution environment is {}.",
            runtime(inp.language, &d.content)
        ),
    });
    if mal {
        let caps: Vec<String> = d
            .behaviours
            .iter()
            .map(|b| lower_first(b.split(" (").next().unwrap_or(b)))
            .collect();
        if caps.len() >= 2 {
            p3_opt.push(format!(
                "Broken down, its capabilities are: {}.",
                list(&caps)
            ));
        }
        if let Some(first) = d.iocs.first().or(iocs.first()) {
            p3_opt.push(match r.random_range(0..3) {
                0 => format!("Blocking or hunting for {first} across the estate finds other hosts where it ran."),
                1 => format!("Responders can search endpoints and proxy logs for {first} to scope the incident."),
                _ => format!("The string {first} is a reliable detection anchor for this sample."),
            });
        }
    } else {
        let n_fns = functions(inp.language, &d.content).len();
        p3_opt.push(match (n_fns, r.random_range(0..2)) {
            (0, _) => format!("For a {n}-line job the flat layout is proportionate, and the commands match the stated purpose one to one."),
            (_, 0) => format!("At {n} lines with {n_fns} helper routines, its size is in proportion to the job it performs."),
            _ => pick(r, &[
                "The code is written for maintainability, with named values near the top that an operator can adjust.",
                "Settings such as paths and hosts sit in variables near the top, which keeps the logic easy to adjust.",
                "Its layout favours maintenance: configuration first, then the logic that uses it.",
            ]).to_string(),
        });
    }
    let chatty = [
        "echo ",
        "Write-Host",
        "Write-Output",
        "Write-Log",
        "print(",
        "console.log",
        "log.info",
        "logging.",
    ]
    .iter()
    .any(|t| d.content.contains(t));
    let quiet = match (chatty, mal) {
        (false, true) => Some(pick(r, &[
            "It prints nothing while it works, so a user who starts it sees no sign of activity.",
            "Nothing is written to the console, leaving the user unaware that it ran.",
            "The script stays silent on the console from start to finish.",
        ])),
        (false, false) => Some(pick(r, &[
            "It works quietly and reports only through its exit status and the files it writes.",
            "There is no console chatter; success or failure shows in the exit code and the outputs.",
        ])),
        (true, false) => Some(pick(r, &[
            "Progress messages are printed as it goes, so an operator can follow each step.",
            "Each stage announces itself on the console, which makes runs easy to follow in a log.",
            "Status lines are emitted along the way, which helps when reading scheduler or CI logs.",
        ])),
        (true, true) => None,
    };
    if let Some(q) = quiet {
        p3_opt.push(q.to_string());
    }
    if d.content.lines().count() <= 8 && inp.obf.is_none() {
        p1_opt.push(format!(
            "With only {n} lines there is no configuration, argument handling or error recovery around the core command."
        ));
    }
    let mut p4_opt = vec![format!(
        "The file is {} bytes in total{}.",
        inp.content.len(),
        if inp.obf.is_some() {
            " including the encoded payload"
        } else {
            ""
        }
    )];
    if inp.obf.is_some() {
        p4_opt.push("Static scanners that only look at the outer text see none of the commands described above until the layer is decoded.".to_string());
    }

    let mut paras = vec![p1, p2, p3];
    let with_p4 = inp.pad_note.is_some() || r.random_bool(0.55);
    if with_p4 {
        paras.push(p4);
    }
    let swapped = r.random_bool(0.3);
    if swapped {
        paras.swap(1, 2);
    }
    let (steps_idx, eff_idx) = if swapped { (2, 1) } else { (1, 2) };
    let target = r.random_range(200..245);
    let mut fillers: Vec<(usize, String)> = Vec::new();
    for s in p1_opt {
        fillers.push((0, s));
    }
    for s in p3_opt {
        fillers.push((eff_idx, s));
    }
    let last = paras.len() - 1;
    for s in p4_opt {
        fillers.push((last, s));
    }
    for i in (1..fillers.len()).rev() {
        let j = r.random_range(0..=i);
        fillers.swap(i, j);
    }
    for (at, s) in fillers {
        if words(&paras) >= target {
            break;
        }
        paras[at].push(s);
    }
    // Too long: drop middle steps (the first and last stay).
    while words(&paras) > 275 && paras[steps_idx].len() > 2 {
        let mid = paras[steps_idx].len() / 2;
        paras[steps_idx].remove(mid);
    }
    paras
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| p.join(" "))
        .collect::<Vec<_>>()
        .join("\n\n")
}
