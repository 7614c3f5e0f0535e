//! Tokenizer built from a tiny synthetic GGUF file (no real model needed).

use std::collections::BTreeMap;
use std::path::Path;

use automaldesc_runtime::gguf::{f32_bytes, write_gguf, GgmlType, GgufFile, MetaValue};
use automaldesc_runtime::tokenizer::{Tokenizer, TokenizerError};

/// GPT-2 byte-level alphabet, in byte order.
fn byte_chars() -> Vec<String> {
    let mut next = 256u32;
    (0u32..256)
        .map(|b| {
            let printable = (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || b >= 0xae;
            let c = if printable {
                b
            } else {
                next += 1;
                next - 1
            };
            char::from_u32(c).unwrap().to_string()
        })
        .collect()
}

fn strs(v: &[String]) -> MetaValue {
    MetaValue::Array(v.iter().map(|s| MetaValue::Str(s.clone())).collect())
}

fn write_model(path: &Path, model: &str, pre: &str) {
    let mut tokens = vec!["<|endoftext|>".to_string(), "<|im_end|>".to_string()];
    tokens.extend(byte_chars());
    let pairs = [
        ("Ġ", "h"),
        ("Ġh", "e"),
        ("h", "e"),
        ("l", "l"),
        ("Ġhe", "ll"),
        ("he", "ll"),
        ("Ġhell", "o"),
        ("hell", "o"),
    ];
    tokens.extend(pairs.iter().map(|(a, b)| format!("{a}{b}")));
    let merges: Vec<String> = pairs.iter().map(|(a, b)| format!("{a} {b}")).collect();
    let mut types = vec![MetaValue::I32(3), MetaValue::I32(3)];
    types.resize(tokens.len(), MetaValue::I32(1));
    let mut m = BTreeMap::new();
    m.insert(
        "general.architecture".into(),
        MetaValue::Str("llama".into()),
    );
    m.insert("tokenizer.ggml.model".into(), MetaValue::Str(model.into()));
    m.insert("tokenizer.ggml.pre".into(), MetaValue::Str(pre.into()));
    m.insert("tokenizer.ggml.tokens".into(), strs(&tokens));
    m.insert("tokenizer.ggml.merges".into(), strs(&merges));
    m.insert("tokenizer.ggml.token_type".into(), MetaValue::Array(types));
    m.insert("tokenizer.ggml.eos_token_id".into(), MetaValue::U32(1));
    let w = f32_bytes(&[0.0; 4]);
    write_gguf(path, &m, &[("dummy", &[4], GgmlType::F32, &w)]).unwrap();
}

fn load(model: &str, pre: &str) -> Result<Tokenizer, TokenizerError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tok.gguf");
    write_model(&path, model, pre);
    Tokenizer::from_gguf(&GgufFile::open(&path).unwrap())
}

#[test]
fn tiny_smollm_tokenizer() {
    let t = load("gpt2", "smollm").unwrap();
    let hello = t.token_id("hello").unwrap();
    let sp_hello = t.token_id("Ġhello").unwrap();
    assert_eq!(t.encode("hello hello").unwrap(), [hello, sp_hello]);
    assert_eq!(t.token_bytes(sp_hello), b" hello");
    assert_eq!(t.encode("hello<|im_end|>").unwrap(), [hello, 1]);
    assert!(t.is_control(1) && !t.is_control(hello));
    assert_eq!(t.eos_id(), Some(1));
    assert_eq!(t.bos_id(), None);
    assert_eq!(t.chat_template(), None);
    let ids = t.encode("a1 22\n\u{e9}").unwrap();
    assert_eq!(t.decode(&ids), "a1 22\n\u{e9}");
    // digits one per token, the space on its own
    let d = t.token_id("2").unwrap();
    assert_eq!(t.encode(" 22").unwrap(), [t.token_id("Ġ").unwrap(), d, d]);
}

#[test]
fn llama_bpe_and_gpt2_pre_tokenizers_build() {
    for pre in ["llama-bpe", "default", "gpt-2"] {
        let t = load("gpt2", pre).unwrap();
        let ids = t.encode("hello hello 123").unwrap();
        assert_eq!(t.decode(&ids), "hello hello 123", "{pre}");
    }
}

#[test]
fn unsupported_configurations_are_errors() {
    let err = load("gpt2", "no-such-pre").unwrap_err();
    assert!(err.to_string().contains("no-such-pre"), "{err}");
    let err = load("llama", "default").unwrap_err();
    assert!(matches!(err, TokenizerError::UnsupportedModel(_)), "{err}");
}
