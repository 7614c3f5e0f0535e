//! Dequantisation against fixtures produced by the independent Python `gguf`
//! package (see `tests/peer/gen_quant_fixtures.py`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use automaldesc_runtime::gguf::{dequantize, GgmlType, GgufError};

#[derive(serde::Deserialize)]
struct Entry {
    type_id: u32,
    n_elements: usize,
}

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/quant")
}

#[test]
fn dequantize_matches_python_gguf_reference() {
    let dir = data_dir();
    let manifest: BTreeMap<String, Entry> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    assert!(manifest.len() >= 12);
    for (name, entry) in &manifest {
        let dtype = GgmlType::from_id(entry.type_id).unwrap();
        assert_eq!(format!("{dtype:?}"), *name);
        let raw = std::fs::read(dir.join(format!("{name}.bin"))).unwrap();
        let expected: Vec<f32> = std::fs::read(dir.join(format!("{name}.f32")))
            .unwrap()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let got = dequantize(dtype, &raw, entry.n_elements).unwrap();
        assert_eq!(got.len(), expected.len(), "{name}");
        let mut worst = 0f32;
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            let tol = 1e-6 * e.abs().max(1e-30);
            assert!((g - e).abs() <= tol, "{name}[{i}]: got {g}, expected {e}");
            worst = worst.max((g - e).abs());
        }
        println!(
            "{name}: {} values match (max abs diff {worst:e})",
            got.len()
        );
    }
}

#[test]
fn size_mismatch_and_unsupported_are_errors() {
    let err = dequantize(GgmlType::Q4_1, &[0u8; 19], 32).unwrap_err();
    assert!(matches!(err, GgufError::SizeMismatch { .. }), "{err}");
    let err = dequantize(GgmlType::Q8_0, &[0u8; 34], 31).unwrap_err();
    assert!(matches!(err, GgufError::SizeMismatch { .. }), "{err}");
    let err = dequantize(GgmlType::IQ2_XXS, &[0u8; 66], 256).unwrap_err();
    assert!(
        matches!(err, GgufError::UnsupportedType(GgmlType::IQ2_XXS)),
        "{err}"
    );
    assert!(err.to_string().contains("IQ2_XXS"));
}

#[test]
fn simple_types() {
    let v = [1.5f32, -2.25, 0.0, 1e-3];
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    assert_eq!(dequantize(GgmlType::F32, &bytes, 4).unwrap(), v);
    let f16: Vec<u8> = [1.5f32, -2.25]
        .iter()
        .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
        .collect();
    assert_eq!(dequantize(GgmlType::F16, &f16, 2).unwrap(), [1.5, -2.25]);
    let bf16: Vec<u8> = [1.5f32, -2.25]
        .iter()
        .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
        .collect();
    assert_eq!(dequantize(GgmlType::BF16, &bf16, 2).unwrap(), [1.5, -2.25]);
}
