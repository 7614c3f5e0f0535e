//! Tokenizer checks on the real SmolLM2 GGUF file (skipped when absent), and
//! a comparison with llama.cpp token ids when llama-cpp-python is installed.

use std::path::PathBuf;
use std::process::Command;

use automaldesc_runtime::gguf::GgufFile;
use automaldesc_runtime::tokenizer::Tokenizer;

mod support;
use support::{model_path, root as workspace_root, skip};

fn load() -> Option<(PathBuf, Tokenizer)> {
    let path = model_path()?;
    let g = GgufFile::open(&path).unwrap();
    let t = Tokenizer::from_gguf(&g).unwrap();
    Some((path, t))
}

const SNIPPETS: &[&str] = &[
    "def main():\n    print(\"hello, world\")\n\nif __name__ == '__main__':\n    main()\n",
    "fn main() {\n    let v: Vec<u32> = (0..10).collect();\n    println!(\"{:?}\", v);\n}",
    "const f = async (x) => { await fetch(`/api/${x}`); return x ?? 0; };",
    "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 42); return 0; }",
    "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tfmt.Println(\"héllo\")\n}",
    "#!/bin/sh\nfor f in *.txt; do echo \"$f\"; done 2>&1 | grep -v '^#'",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC;",
    "The quick brown fox jumps over the lazy dog.",
    "It's a test: we'll see, they've gone, I'm here, you'd know, she's right.",
    "Numbers: 0 7 42 123 4567 89012 3.14159 -2.5e10 1,000,000 2026-11-24",
    "数学是科学的皇后。我们今天学习汉字。",
    "日本語のテキストとカタカナ、ひらがな。",
    "العربية لغة جميلة، ١٢٣ أرقام.",
    "हिन्दी में लिखा गया वाक्य।",
    "Русский текст с буквами ёЁ и цифрами 2024.",
    "한국어 문장입니다. 안녕하세요!",
    "Ελληνικά: αβγδε ΑΒΓΔΕ.",
    "ภาษาไทยไม่มีการเว้นวรรค",
    "emoji: 😀 👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️ ✨",
    "   leading spaces and trailing   ",
    "tabs\tand\t\ttabs\n\n\nnewlines\r\nCRLF\r\n",
    "\u{a0}non-breaking\u{2003}em space\u{200b}zero width",
    "MiXeD CaSe WoRdS and ALLCAPS and lowercase",
    "punctuation!!! ??? ... --- *** ((())) [[]] {{}} <<>>",
    "https://example.com/path?query=1&x=%20#frag",
    "email@example.org, @handle, #hashtag, $100, 50%, a_b_c",
    "Ünïcödé äöü ß çñ øå œ ĳ ﬁ",
    "<|im_start|>user\nhi<|im_end|>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>assistant\n",
    "text with <|endoftext|> inside and <file_sep> markers",
    "",
    " ",
    "\n",
    "a",
    "0",
    "x = [1, 2, 3]  # comment\n\t\ty = {'k': None}",
    "    indented\n        more\n            most",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math 𝒜ℬ𝒞 ∑∫∂√∞ ≤≥≠",
    "mixed 中文 and English 123 and 😀",
    "2 + 2 = 4; 10/3 ≈ 3.33; 1e-9",
    "a  <|im_end|>  b<|im_end|><|im_start|><|im_start",
    "I'M SHOUTING, WE'LL SEE, IT'S 'RE 'VE 'D",
    "\u{3000}ideographic space\u{85}next line\u{1c}file sep",
    "  \n  \n \t\n",
    "٣٤٥ ௧௨௩ ½ ² Ⅻ",
];

fn corpus() -> Vec<String> {
    let mut out: Vec<String> = SNIPPETS.iter().map(|s| s.to_string()).collect();
    let joiners = ["", " ", "\n", "  ", "\t", "\n\n", " 1", "9 "];
    for (i, a) in SNIPPETS.iter().enumerate() {
        for (k, b) in SNIPPETS.iter().enumerate().skip(i + 1) {
            out.push(format!("{a}{}{b}", joiners[(i + k) % joiners.len()]));
        }
    }
    // A few generated whitespace/digit runs.
    for n in 1..=12 {
        out.push(" ".repeat(n) + "x");
        out.push(format!("{}{}", "9".repeat(n), "\n".repeat(n % 4)));
    }
    out
}

#[test]
fn round_trip_many_strings() {
    let Some((_, t)) = load() else { return };
    let corpus = corpus();
    assert!(corpus.len() >= 500, "{}", corpus.len());
    for s in &corpus {
        let ids = t.encode(s).unwrap();
        assert_eq!(&t.decode(&ids), s, "ids {ids:?}");
        let joined: Vec<u8> = ids
            .iter()
            .flat_map(|&i| t.token_bytes(i).to_vec())
            .collect();
        assert_eq!(joined, s.as_bytes());
    }
    println!("{} strings round-trip", corpus.len());
}

#[test]
fn digits_are_split_one_per_token() {
    let Some((_, t)) = load() else { return };
    let ids = t.encode("12345").unwrap();
    assert_eq!(ids.len(), 5);
    for (id, d) in ids.iter().zip("12345".chars()) {
        assert_eq!(t.token_bytes(*id), d.to_string().as_bytes());
    }
    // "year", " ", then one token per digit.
    let ids = t.encode("year 2026").unwrap();
    assert_eq!(ids.len(), 6, "{ids:?}");
    assert_eq!(t.decode(&ids[..2]), "year ");
}

#[test]
fn control_tokens_and_known_ids() {
    let Some((_, t)) = load() else { return };
    assert_eq!(t.vocab_size(), 49152);
    assert_eq!(t.token_id("<|endoftext|>"), Some(0));
    assert_eq!(t.token_id("<|im_start|>"), Some(1));
    assert_eq!(t.token_id("<|im_end|>"), Some(2));
    assert_eq!(t.bos_id(), Some(1));
    assert_eq!(t.eos_id(), Some(2));
    assert!(t.is_control(0) && t.is_control(2) && t.is_control(16));
    assert!(!t.is_control(17));
    assert_eq!((0..49152).filter(|&i| t.is_control(i)).count(), 17);
    assert_eq!(t.token_bytes(2), b"<|im_end|>");
    assert!(t.chat_template().unwrap().contains("<|im_start|>"));

    let ids = t.encode("<|im_start|>user\nhi<|im_end|>").unwrap();
    assert_eq!(ids[0], 1);
    assert_eq!(*ids.last().unwrap(), 2);
    assert_eq!(ids.iter().filter(|&&i| i == 1 || i == 2).count(), 2);
    assert_eq!(t.decode(&ids[1..ids.len() - 1]), "user\nhi");

    let hello = t.encode(" hello").unwrap();
    assert_eq!(hello, [33662]);
    assert_eq!(t.token_bytes(33662), b" hello");
    assert_eq!(t.encode("hello world").unwrap().len(), 2);
    assert_eq!(t.encode("").unwrap(), Vec::<u32>::new());
    // Invalid partial UTF-8 decodes lossily.
    let emoji = t.encode("😀").unwrap();
    if emoji.len() > 1 {
        assert!(t.decode(&emoji[..1]).contains('\u{fffd}'));
    }
}

/// Runs a reference script on the corpus; `None` (with a skip message) when
/// its Python dependencies are missing (exit code 3).
/// Ids from a reference script; `optional` peers may be missing without failing the test.
fn reference_ids(
    script: &str,
    path: &PathBuf,
    corpus: &[String],
    optional: bool,
) -> Option<Vec<Vec<u32>>> {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("strings.json");
    let output = dir.path().join("ids.json");
    std::fs::write(&input, serde_json::to_string(corpus).unwrap()).unwrap();
    let status = Command::new("python3")
        .arg(workspace_root().join("tests/peer").join(script))
        .arg(path)
        .arg(&input)
        .arg(&output)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) if s.code() == Some(3) => {
            let reason = format!("python dependencies of {script} are missing");
            if optional {
                eprintln!("SKIP: {reason}");
            } else {
                skip(&reason);
            }
            return None;
        }
        Ok(s) => panic!("{script} failed: {s}"),
        Err(e) => {
            skip(&format!("cannot run python3: {e}"));
            return None;
        }
    }
    let ids: Vec<Vec<u32>> =
        serde_json::from_str(&std::fs::read_to_string(&output).unwrap()).unwrap();
    assert_eq!(ids.len(), corpus.len());
    Some(ids)
}

/// llama-cpp-python compiles llama.cpp; CI installs it when it can and then sets
/// AUTOMALDESC_LLAMACPP_REFERENCE, so the llama.cpp comparison may not skip.
fn peer_required() -> bool {
    std::env::var_os("AUTOMALDESC_LLAMACPP_REFERENCE").is_some()
}

fn count_mismatches(t: &Tokenizer, corpus: &[String], expected: &[Vec<u32>], who: &str) -> usize {
    let mut mismatches = 0;
    for (s, want) in corpus.iter().zip(expected) {
        let got = t.encode(s).unwrap();
        if &got != want {
            mismatches += 1;
            eprintln!("MISMATCH {s:?}\n  ours: {got:?}\n  {who}: {want:?}");
        }
    }
    println!(
        "{who} agreement: {}/{} strings",
        corpus.len() - mismatches,
        corpus.len()
    );
    mismatches
}

/// llama.cpp itself, through llama-cpp-python (`tests/peer/tokenize_reference.py`).
#[test]
fn matches_llama_cpp() {
    let Some((path, t)) = load() else { return };
    let corpus = corpus();
    let Some(expected) = reference_ids("tokenize_reference.py", &path, &corpus, !peer_required())
    else {
        return;
    };
    assert_eq!(count_mismatches(&t, &corpus, &expected, "llama.cpp"), 0);
}

/// An independent textbook BPE in Python over the GGUF vocabulary and merges
/// (`tests/peer/bpe_reference.py`).
#[test]
fn matches_independent_python_bpe() {
    let Some((path, t)) = load() else { return };
    let corpus = corpus();
    let Some(expected) = reference_ids("bpe_reference.py", &path, &corpus, false) else {
        return;
    };
    assert_eq!(count_mismatches(&t, &corpus, &expected, "python bpe"), 0);
}
