//! Round trips through the GGUF writer and reader, and error handling on
//! corrupt input, without needing a real model file.

use std::collections::BTreeMap;
use std::path::Path;

use automaldesc_runtime::gguf::{
    f16_bytes, f32_bytes, write_gguf, GgmlType, GgufError, GgufFile, MetaValue,
};

fn sample_metadata() -> BTreeMap<String, MetaValue> {
    let mut m = BTreeMap::new();
    m.insert(
        "general.architecture".into(),
        MetaValue::Str("llama".into()),
    );
    m.insert("llama.block_count".into(), MetaValue::U32(2));
    m.insert("llama.context_length".into(), MetaValue::U64(8192));
    m.insert("llama.small".into(), MetaValue::I8(-3));
    m.insert("llama.u16".into(), MetaValue::U16(7));
    m.insert("llama.rope.freq_base".into(), MetaValue::F32(10000.0));
    m.insert("llama.f64".into(), MetaValue::F64(0.5));
    m.insert("flag".into(), MetaValue::Bool(true));
    m.insert(
        "tokenizer.ggml.tokens".into(),
        MetaValue::Array(vec![MetaValue::Str("a".into()), MetaValue::Str("é".into())]),
    );
    m.insert(
        "tokenizer.ggml.scores".into(),
        MetaValue::Array(vec![MetaValue::F32(0.5), MetaValue::F32(-1.0)]),
    );
    m.insert(
        "tokenizer.ggml.token_type".into(),
        MetaValue::Array(vec![MetaValue::I32(1), MetaValue::I32(3)]),
    );
    m.insert(
        "nested".into(),
        MetaValue::Array(vec![MetaValue::Array(vec![MetaValue::U8(1)])]),
    );
    m
}

fn write_sample(path: &Path) -> (Vec<f32>, Vec<f32>) {
    let a: Vec<f32> = (0..6 * 4).map(|i| i as f32 * 0.25 - 3.0).collect();
    let b: Vec<f32> = (0..5).map(|i| i as f32 - 2.0).collect();
    let (ab, bb) = (f32_bytes(&a), f16_bytes(&b));
    write_gguf(
        path,
        &sample_metadata(),
        &[
            ("blk.0.w", &[6, 4], GgmlType::F32, &ab),
            ("norm", &[5], GgmlType::F16, &bb),
        ],
    )
    .unwrap();
    (a, b)
}

#[test]
fn round_trip_metadata_and_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.gguf");
    let (a, b) = write_sample(&path);
    let g = GgufFile::open(&path).unwrap();
    assert_eq!(g.version(), 3);
    assert_eq!(g.metadata(), &sample_metadata());
    assert_eq!(g.architecture().unwrap(), "llama");
    assert_eq!(g.get_u32("llama.block_count").unwrap(), 2);
    assert_eq!(g.get_u32("llama.context_length").unwrap(), 8192);
    assert_eq!(g.get_u64("llama.u16").unwrap(), 7);
    assert_eq!(g.get_i32("llama.small").unwrap(), -3);
    assert!(
        g.get_u32("llama.small").is_err(),
        "negative does not fit u32"
    );
    assert_eq!(g.get_f32("llama.rope.freq_base").unwrap(), 10000.0);
    assert_eq!(g.get_f32("llama.f64").unwrap(), 0.5);
    assert!(g.get_bool("flag").unwrap());
    assert_eq!(
        g.get_str_array("tokenizer.ggml.tokens").unwrap(),
        ["a", "é"]
    );
    assert_eq!(
        g.get_f32_array("tokenizer.ggml.scores").unwrap(),
        [0.5, -1.0]
    );
    assert_eq!(
        g.get_i32_array("tokenizer.ggml.token_type").unwrap(),
        [1, 3]
    );
    assert_eq!(g.get_u32_opt("absent").unwrap(), None);
    assert_eq!(g.get_u32_opt("llama.block_count").unwrap(), Some(2));

    let err = g.get_u32("llama.missing_key").unwrap_err();
    assert!(err.to_string().contains("llama.missing_key"), "{err}");
    let err = g.get_str("llama.block_count").unwrap_err();
    assert!(matches!(err, GgufError::WrongType { .. }), "{err}");

    assert_eq!(g.tensors().len(), 2);
    let t = g.tensor("blk.0.w").unwrap();
    assert_eq!(t.dims, [6, 4]);
    assert_eq!(t.dtype, GgmlType::F32);
    assert_eq!(t.offset % 32, 0);
    assert_eq!(g.dequantize("blk.0.w").unwrap(), a);
    assert_eq!(g.dequantize("norm").unwrap(), b);
    assert_eq!(g.tensor_bytes("norm").unwrap().len(), 10);
    let err = g.tensor("no.such.tensor").unwrap_err();
    assert!(err.to_string().contains("no.such.tensor"), "{err}");
}

#[test]
fn custom_alignment() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.gguf");
    let mut m = BTreeMap::new();
    m.insert("general.alignment".to_string(), MetaValue::U32(64));
    let x = f32_bytes(&[1.0, 2.0, 3.0]);
    let y = f32_bytes(&[4.0]);
    write_gguf(
        &path,
        &m,
        &[
            ("x", &[3], GgmlType::F32, &x),
            ("y", &[1], GgmlType::F32, &y),
        ],
    )
    .unwrap();
    let g = GgufFile::open(&path).unwrap();
    assert_eq!(g.alignment(), 64);
    assert_eq!(g.tensor("y").unwrap().offset % 64, 0);
    assert_eq!(g.dequantize("y").unwrap(), [4.0]);
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.gguf");
    write_sample(&path);
    let full = std::fs::read(&path).unwrap();
    let cut = dir.path().join("cut.gguf");
    for len in 0..full.len() {
        std::fs::write(&cut, &full[..len]).unwrap();
        let res = GgufFile::open(&cut);
        assert!(res.is_err(), "prefix of {len} bytes accepted");
    }
}

#[test]
fn bad_magic_and_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.gguf");
    write_sample(&path);
    let full = std::fs::read(&path).unwrap();
    let p = dir.path().join("bad.gguf");

    let mut bad = full.clone();
    bad[0] = b'X';
    std::fs::write(&p, &bad).unwrap();
    let err = GgufFile::open(&p).unwrap_err();
    assert!(matches!(err, GgufError::BadMagic(_)), "{err}");
    assert!(err.to_string().contains("magic"));

    let mut bad = full.clone();
    bad[4..8].copy_from_slice(&1u32.to_le_bytes());
    std::fs::write(&p, &bad).unwrap();
    let err = GgufFile::open(&p).unwrap_err();
    assert!(matches!(err, GgufError::UnsupportedVersion(1)), "{err}");

    let mut bad = full.clone();
    bad[4..8].copy_from_slice(&2u32.to_le_bytes());
    std::fs::write(&p, &bad).unwrap();
    assert!(GgufFile::open(&p).is_ok(), "v2 has the same layout");

    let err = GgufFile::open(&dir.path().join("missing.gguf")).unwrap_err();
    assert!(matches!(err, GgufError::Io { .. }), "{err}");
}

#[test]
fn corrupt_counts_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.gguf");
    write_sample(&path);
    let full = std::fs::read(&path).unwrap();
    let p = dir.path().join("bad.gguf");
    for field in [8usize, 16] {
        let mut bad = full.clone();
        bad[field..field + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        std::fs::write(&p, &bad).unwrap();
        assert!(GgufFile::open(&p).is_err());
    }
    // Flip every byte of the header one at a time: must never panic.
    let header_len = full.len().min(600);
    for i in 0..header_len {
        let mut bad = full.clone();
        bad[i] ^= 0xff;
        std::fs::write(&p, &bad).unwrap();
        let _ = GgufFile::open(&p);
    }
}

#[test]
fn writer_rejects_wrong_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.gguf");
    let x = f32_bytes(&[1.0, 2.0]);
    let err = write_gguf(&path, &BTreeMap::new(), &[("x", &[3], GgmlType::F32, &x)]).unwrap_err();
    assert!(err.to_string().contains('x'), "{err}");
}
