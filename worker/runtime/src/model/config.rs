//! Llama-family hyper-parameters: the presets the product knows by name, and readers for
//! the two places a checkpoint states them (GGUF metadata and a Hugging Face `config.json`).

use serde::{Deserialize, Serialize};

/// How rotary frequencies are stretched for long contexts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum RopeScaling {
    /// Positions divided by `factor`.
    Linear { factor: f64 },
    /// The Llama 3.1 scheme: low frequencies divided by `factor`, high ones kept, a smooth
    /// blend between `low_freq_factor` and `high_freq_factor` wavelengths.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position: usize,
    },
}

/// Shape and numerics of a Llama-family decoder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub max_position: usize,
    pub tie_embeddings: bool,
}

impl LlamaConfig {
    #[allow(clippy::too_many_arguments)]
    fn preset(
        vocab_size: usize,
        hidden_size: usize,
        intermediate_size: usize,
        num_layers: usize,
        num_heads: usize,
        num_kv_heads: usize,
        rope_theta: f64,
        max_position: usize,
        tie_embeddings: bool,
    ) -> Self {
        Self {
            vocab_size,
            hidden_size,
            intermediate_size,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim: hidden_size / num_heads,
            rms_norm_eps: 1e-5,
            rope_theta,
            rope_scaling: None,
            max_position,
            tie_embeddings,
        }
    }

    pub fn smollm2_135m() -> Self {
        Self::preset(49152, 576, 1536, 30, 9, 3, 100_000.0, 8192, true)
    }

    pub fn smollm2_360m() -> Self {
        Self::preset(49152, 960, 2560, 32, 15, 5, 100_000.0, 8192, true)
    }

    pub fn smollm2_1_7b() -> Self {
        Self::preset(49152, 2048, 8192, 24, 32, 32, 130_000.0, 8192, true)
    }

    pub fn tinyllama_1_1b() -> Self {
        Self::preset(32000, 2048, 5632, 22, 32, 4, 10_000.0, 2048, false)
    }

    fn llama3_scaling(factor: f64) -> Option<RopeScaling> {
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position: 8192,
        })
    }

    pub fn llama3_2_1b() -> Self {
        let mut c = Self::preset(128_256, 2048, 8192, 16, 32, 8, 500_000.0, 131_072, true);
        c.head_dim = 64;
        c.rope_scaling = Self::llama3_scaling(32.0);
        c
    }

    pub fn llama3_2_3b() -> Self {
        let mut c = Self::preset(128_256, 3072, 8192, 28, 24, 8, 500_000.0, 131_072, true);
        c.rope_scaling = Self::llama3_scaling(32.0);
        c
    }

    pub fn llama3_1_8b() -> Self {
        let mut c = Self::preset(128_256, 4096, 14336, 32, 32, 8, 500_000.0, 131_072, false);
        c.rope_scaling = Self::llama3_scaling(8.0);
        c
    }

    pub fn llama3_1_70b() -> Self {
        let mut c = Self::preset(128_256, 8192, 28672, 80, 64, 8, 500_000.0, 131_072, false);
        c.rope_scaling = Self::llama3_scaling(8.0);
        c
    }

    /// A few-layer random model for tests that need no trained weights.
    pub fn tiny(vocab_size: usize) -> Self {
        Self::preset(vocab_size, 64, 128, 2, 4, 2, 10_000.0, 512, true)
    }

    /// Looks a preset up by the names the command line accepts.
    pub fn by_name(name: &str) -> Option<Self> {
        Some(match name {
            "smollm2-135m" => Self::smollm2_135m(),
            "smollm2-360m" => Self::smollm2_360m(),
            "smollm2-1.7b" => Self::smollm2_1_7b(),
            "tinyllama-1.1b" => Self::tinyllama_1_1b(),
            "llama-3.2-1b" => Self::llama3_2_1b(),
            "llama-3.2-3b" => Self::llama3_2_3b(),
            "llama-3.1-8b" => Self::llama3_1_8b(),
            "llama-3.1-70b" => Self::llama3_1_70b(),
            _ => return None,
        })
    }

    pub const PRESETS: [&'static str; 8] = [
        "smollm2-135m",
        "smollm2-360m",
        "smollm2-1.7b",
        "tinyllama-1.1b",
        "llama-3.2-1b",
        "llama-3.2-3b",
        "llama-3.1-8b",
        "llama-3.1-70b",
    ];

    pub fn group_size(&self) -> usize {
        self.num_heads / self.num_kv_heads
    }

    /// Inverse rotary frequencies, one per pair of a head's dimensions, after scaling.
    pub fn rope_inv_freq(&self) -> Vec<f64> {
        let half = self.head_dim / 2;
        (0..half)
            .map(|i| {
                let f = 1.0 / self.rope_theta.powf(2.0 * i as f64 / self.head_dim as f64);
                match &self.rope_scaling {
                    None => f,
                    Some(RopeScaling::Linear { factor }) => f / factor,
                    Some(RopeScaling::Llama3 {
                        factor,
                        low_freq_factor,
                        high_freq_factor,
                        original_max_position,
                    }) => {
                        let old = *original_max_position as f64;
                        let low_wavelen = old / low_freq_factor;
                        let high_wavelen = old / high_freq_factor;
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    }
                }
            })
            .collect()
    }

    /// Reads the hyper-parameters of a Hugging Face `config.json`.
    pub fn from_hf_json(text: &str) -> Result<Self, serde_json::Error> {
        #[derive(Deserialize)]
        struct Hf {
            vocab_size: usize,
            hidden_size: usize,
            intermediate_size: usize,
            num_hidden_layers: usize,
            num_attention_heads: usize,
            num_key_value_heads: Option<usize>,
            head_dim: Option<usize>,
            rms_norm_eps: f64,
            rope_theta: Option<f64>,
            rope_scaling: Option<serde_json::Value>,
            /// transformers 5 moved `rope_theta` and the scaling here.
            rope_parameters: Option<serde_json::Value>,
            max_position_embeddings: usize,
            tie_word_embeddings: Option<bool>,
        }
        let hf: Hf = serde_json::from_str(text)?;
        let rope_scaling = hf
            .rope_scaling
            .as_ref()
            .or(hf.rope_parameters.as_ref())
            .and_then(parse_hf_rope_scaling);
        let rope_theta = hf.rope_theta.or_else(|| {
            hf.rope_parameters
                .as_ref()
                .and_then(|p| p.get("rope_theta"))
                .and_then(|t| t.as_f64())
        });
        Ok(Self {
            vocab_size: hf.vocab_size,
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            num_layers: hf.num_hidden_layers,
            num_heads: hf.num_attention_heads,
            num_kv_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
            head_dim: hf
                .head_dim
                .unwrap_or(hf.hidden_size / hf.num_attention_heads),
            rms_norm_eps: hf.rms_norm_eps,
            rope_theta: rope_theta.unwrap_or(10_000.0),
            rope_scaling,
            max_position: hf.max_position_embeddings,
            tie_embeddings: hf.tie_word_embeddings.unwrap_or(false),
        })
    }
}

fn parse_hf_rope_scaling(v: &serde_json::Value) -> Option<RopeScaling> {
    let kind = v
        .get("rope_type")
        .or_else(|| v.get("type"))
        .and_then(|k| k.as_str())?;
    let num = |key: &str| v.get(key).and_then(|x| x.as_f64());
    match kind {
        "linear" => Some(RopeScaling::Linear {
            factor: num("factor")?,
        }),
        "llama3" => Some(RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor").unwrap_or(1.0),
            high_freq_factor: num("high_freq_factor").unwrap_or(4.0),
            original_max_position: num("original_max_position_embeddings").unwrap_or(8192.0)
                as usize,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_consistent() {
        for name in LlamaConfig::PRESETS {
            let c = LlamaConfig::by_name(name).unwrap();
            assert_eq!(c.num_heads % c.num_kv_heads, 0, "{name}");
            assert_eq!(c.head_dim % 2, 0, "{name}");
        }
        let c = LlamaConfig::smollm2_135m();
        assert_eq!((c.head_dim, c.group_size()), (64, 3));
    }

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let plain = LlamaConfig {
            rope_scaling: None,
            ..LlamaConfig::llama3_1_8b()
        };
        let scaled = LlamaConfig::llama3_1_8b();
        let (a, b) = (plain.rope_inv_freq(), scaled.rope_inv_freq());
        assert_eq!(a[0], b[0]);
        let last = a.len() - 1;
        assert!((a[last] / 8.0 - b[last]).abs() < 1e-15);
    }

    #[test]
    fn reads_hf_config() {
        let text = r#"{"vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
            "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
            "rms_norm_eps": 1e-05, "rope_theta": 100000, "max_position_embeddings": 8192,
            "tie_word_embeddings": true}"#;
        assert_eq!(
            LlamaConfig::from_hf_json(text).unwrap(),
            LlamaConfig::smollm2_135m()
        );
        // transformers 5 writes the rotary settings under `rope_parameters`.
        let v5 = text.replace(
            r#""rope_theta": 100000"#,
            r#""rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"}"#,
        );
        assert_eq!(
            LlamaConfig::from_hf_json(&v5).unwrap(),
            LlamaConfig::smollm2_135m()
        );
        let llama3 = text.replace(
            r#""rope_theta": 100000"#,
            r#""rope_parameters": {"rope_theta": 100000.0, "rope_type": "llama3", "factor": 32.0,
                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}"#,
        );
        assert!(LlamaConfig::from_hf_json(&llama3)
            .unwrap()
            .rope_scaling
            .is_some());
    }
}
