//! Everything needed to answer with one model, loaded together from one GGUF file or one
//! Hugging Face directory: the decoder, its tokenizer, its chat template and the answer
//! schema for that tokenizer, plus the prompt builder with the long-script truncation policy.

use std::path::Path;

use burn::tensor::Device;

use crate::generate::{AnswerSchema, Vocab, ANSWER_PREFIX};
use crate::gguf::{GgufError, GgufFile};
use crate::model::load::{LoadError, Naming, TensorSource};
use crate::model::{Llama, LlamaConfig};
use crate::prompt::{self, ChatTemplate, Role};
use crate::safetensors::SafeTensors;
use crate::tokenizer::Tokenizer;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("model file {path}: {source}")]
    Gguf { path: String, source: GgufError },
    #[error("model file {path}: {source}")]
    Load { path: String, source: LoadError },
    #[error("model file {path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("adapter {path}: {source}")]
    Adapter {
        path: String,
        source: crate::train::lora::AdapterError,
    },
}

impl TensorSource for GgufFile {
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let info = self.tensor(name).ok()?;
        // GGUF lists the innermost dimension first; row-major shapes list it last.
        Some(info.dims.iter().rev().map(|&d| d as usize).collect())
    }

    fn read_f32(&self, name: &str) -> Result<Vec<f32>, LoadError> {
        self.dequantize(name).map_err(|e| LoadError::Read {
            name: name.to_string(),
            reason: e.to_string(),
        })
    }
}

/// Reads the decoder's hyper-parameters from `llama.*` metadata.
pub fn config_from_gguf(g: &GgufFile) -> Result<LlamaConfig, GgufError> {
    let arch = g.architecture()?;
    let key = |k: &str| format!("{arch}.{k}");
    let hidden = g.get_u32(&key("embedding_length"))? as usize;
    let heads = g.get_u32(&key("attention.head_count"))? as usize;
    let vocab = match g.get_u32_opt(&key("vocab_size"))? {
        Some(v) => v as usize,
        None => g.get_array("tokenizer.ggml.tokens")?.len(),
    };
    let head_dim = match g.get_u32_opt(&key("rope.dimension_count"))? {
        Some(d) => d as usize,
        None => hidden / heads,
    };
    let mut config = LlamaConfig {
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: g.get_u32(&key("feed_forward_length"))? as usize,
        num_layers: g.get_u32(&key("block_count"))? as usize,
        num_heads: heads,
        num_kv_heads: g
            .get_u32_opt(&key("attention.head_count_kv"))?
            .unwrap_or(heads as u32) as usize,
        head_dim,
        rms_norm_eps: f64::from(g.get_f32(&key("attention.layer_norm_rms_epsilon"))?),
        rope_theta: f64::from(g.get_f32_opt(&key("rope.freq_base"))?.unwrap_or(10_000.0)),
        rope_scaling: None,
        max_position: g.get_u32_opt(&key("context_length"))?.unwrap_or(2048) as usize,
        tie_embeddings: !g.has_tensor("output.weight"),
    };
    if g.get_str_opt(&key("rope.scaling.type"))? == Some("linear") {
        if let Some(factor) = g.get_f32_opt(&key("rope.scaling.factor"))? {
            config.rope_scaling = Some(crate::model::RopeScaling::Linear {
                factor: f64::from(factor),
            });
        }
    }
    Ok(config)
}

impl Vocab for Tokenizer {
    fn vocab_size(&self) -> usize {
        Tokenizer::vocab_size(self)
    }
    fn token_bytes(&self, id: u32) -> &[u8] {
        Tokenizer::token_bytes(self, id)
    }
    fn is_control(&self, id: u32) -> bool {
        Tokenizer::is_control(self, id)
    }
    fn encode_plain(&self, text: &str) -> Vec<u32> {
        self.encode(text).unwrap_or_default()
    }
}

/// A model ready to annotate.
pub struct Annotator {
    pub model: Llama,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    pub schema: AnswerSchema,
    /// `file name@first 16 hex of sha256 of the first 1 MiB and the size`: cheap and stable.
    pub model_id: String,
    /// The system messages it is prompted with (training and inference must agree).
    pub prompt_style: prompt::PromptStyle,
    /// The lowest block a merged adapter changed (`None`: the model as loaded). Blocks
    /// below it compute what the loaded model's do, so their prefill states are shared
    /// (see `generate::PrefillReuse`).
    pub first_adapted_block: Option<usize>,
}

impl Annotator {
    /// Loads a model from a GGUF file or a Hugging Face model directory.
    pub fn load(path: &Path, device: &Device) -> Result<Self, RuntimeError> {
        if path.is_dir() {
            Self::load_hf(path, device)
        } else {
            Self::load_gguf(path, device)
        }
    }

    /// Merges a LoRA adapter in PEFT's layout (trained here or elsewhere) into the model.
    pub fn with_adapter(mut self, dir: &Path) -> Result<Self, RuntimeError> {
        let err = |source| RuntimeError::Adapter {
            path: dir.display().to_string(),
            source,
        };
        let adapter =
            crate::train::lora::LoraWeights::load_peft(dir, &self.model.config).map_err(err)?;
        self.model.unpack();
        adapter.merge_into(&mut self.model).map_err(err)?;
        let first = adapter.first_adapted_layer();
        self.first_adapted_block = Some(self.first_adapted_block.map_or(first, |f| f.min(first)));
        self.schema.label_head = adapter.label_head.clone();
        self.schema.language_head = adapter.language_head.clone();
        self.model = self.model.packed_for_device();
        self.schema.label_bias = read_label_bias(dir)?;
        let digest = automaldesc_common::sha256_hex(
            &adapter
                .flatten()
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>(),
        );
        self.model_id = format!("{}+lora@{}", self.model_id, &digest[..16]);
        Ok(self)
    }

    pub fn load_gguf(path: &Path, device: &Device) -> Result<Self, RuntimeError> {
        let p = path.display().to_string();
        let gg = |source| RuntimeError::Gguf {
            path: p.clone(),
            source,
        };
        let g = GgufFile::open(path).map_err(gg)?;
        let config = config_from_gguf(&g).map_err(gg)?;
        let mut model = Llama::load(&config, &g, Naming::Gguf, device).map_err(|source| {
            RuntimeError::Load {
                path: p.clone(),
                source,
            }
        })?;
        if g.has_tensor("rope_freqs.weight") {
            // Llama 3.1 files carry their rope scaling as per-frequency divisors.
            let factors = g.dequantize("rope_freqs.weight").map_err(gg)?;
            for (f, d) in model.inv_freq.iter_mut().zip(factors) {
                *f /= f64::from(d);
            }
        }
        let tokenizer = Tokenizer::from_gguf(&g).map_err(|e| RuntimeError::Invalid {
            path: p.clone(),
            reason: e.to_string(),
        })?;
        let model_id = model_id(path).map_err(|e| RuntimeError::Invalid {
            path: p.clone(),
            reason: e.to_string(),
        })?;
        Self::assemble(model, tokenizer, model_id, &p)
    }

    /// Loads a Hugging Face model directory: `config.json`, `model.safetensors` (or its
    /// sharded index), `tokenizer.json`, and the chat template from
    /// `tokenizer_config.json` or `chat_template.jinja`.
    pub fn load_hf(dir: &Path, device: &Device) -> Result<Self, RuntimeError> {
        let p = dir.display().to_string();
        let invalid = |reason: String| RuntimeError::Invalid {
            path: p.clone(),
            reason,
        };
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name)).map_err(|e| invalid(format!("{name}: {e}")))
        };
        let config = LlamaConfig::from_hf_json(&read("config.json")?)
            .map_err(|e| invalid(format!("config.json: {e}")))?;
        let weights = SafeTensors::open(dir).map_err(|e| invalid(e.to_string()))?;
        let model =
            Llama::load(&config, &weights, Naming::HuggingFace, device).map_err(|source| {
                RuntimeError::Load {
                    path: p.clone(),
                    source,
                }
            })?;
        let mut tokenizer = Tokenizer::from_tokenizer_json(&dir.join("tokenizer.json"))
            .map_err(|e| invalid(e.to_string()))?;
        let template = match std::fs::read_to_string(dir.join("chat_template.jinja")) {
            Ok(t) => Some(t),
            Err(_) => hf_chat_template(&read("tokenizer_config.json")?)
                .map_err(|e| invalid(format!("tokenizer_config.json: {e}")))?,
        };
        if let Some(t) = template {
            tokenizer.set_chat_template(t);
        }
        let model_id = model_id(&dir.join("config.json")).map_err(|e| invalid(e.to_string()))?;
        Self::assemble(model, tokenizer, model_id, &p)
    }

    /// The parts every checkpoint format shares once model and tokenizer are loaded: the
    /// chat template, the end-of-turn token and the answer schema for that tokenizer.
    fn assemble(
        model: Llama,
        tokenizer: Tokenizer,
        model_id: String,
        path: &str,
    ) -> Result<Self, RuntimeError> {
        let invalid = |reason: String| RuntimeError::Invalid {
            path: path.to_string(),
            reason,
        };
        let template_text = tokenizer
            .chat_template()
            .ok_or_else(|| invalid("no chat template".into()))?;
        let template = ChatTemplate::detect(template_text).map_err(|e| invalid(e.to_string()))?;
        let end_id = tokenizer
            .token_id(template.end_of_turn())
            .ok_or_else(|| invalid(format!("no {} token", template.end_of_turn())))?;
        let schema = AnswerSchema::new(&tokenizer, end_id).map_err(|e| invalid(e.to_string()))?;
        Ok(Self {
            model,
            tokenizer,
            template,
            schema,
            model_id,
            prompt_style: prompt::PromptStyle::Full,
            first_adapted_block: None,
        })
    }

    /// Tokens of the annotator's system message in its style.
    pub fn system_prompt_tokens(&self) -> usize {
        self.tokenizer
            .encode(self.prompt_style.annotator_system())
            .map_or(0, |t| t.len())
    }

    /// Renders a conversation with the model's template and tokenizes it.
    pub fn encode_chat(&self, messages: &[(Role, &str)]) -> Vec<u32> {
        let text = self.template.render(messages, true);
        self.tokenizer.encode(&text).unwrap_or_default()
    }

    /// The annotation prompt for one script, ending with the answer prefix. A script whose
    /// prompt would exceed `budget` tokens keeps its head (two thirds of the room) and tail
    /// (one third), joined by a marker that says how many bytes were dropped.
    pub fn annotation_prompt(&self, script: &[u8], budget: usize) -> AnnotationPrompt {
        let text = String::from_utf8_lossy(script);
        let render = |body: &str| {
            let user = prompt::annotation_user_message(body);
            let mut s = self.template.render(
                &[
                    (Role::System, self.prompt_style.annotator_system()),
                    (Role::User, &user),
                ],
                true,
            );
            s.push_str(ANSWER_PREFIX);
            self.tokenizer.encode(&s).unwrap_or_default()
        };
        let full = render(&text);
        if full.len() <= budget {
            return AnnotationPrompt {
                tokens: full,
                truncated: None,
            };
        }
        let script_tokens = self.tokenizer.encode(&text).unwrap_or_default();
        let overhead = full.len().saturating_sub(script_tokens.len()) + 24;
        let room = budget.saturating_sub(overhead).max(16);
        let head = room * 2 / 3;
        let tail = room - head;
        let head_text = self
            .tokenizer
            .decode(&script_tokens[..head.min(script_tokens.len())]);
        let tail_start = script_tokens.len().saturating_sub(tail);
        let tail_text = self.tokenizer.decode(&script_tokens[tail_start..]);
        let dropped = text.len().saturating_sub(head_text.len() + tail_text.len());
        let body = format!(
            "{head_text}{}{tail_text}",
            prompt::truncation_marker(dropped)
        );
        let mut tokens = render(&body);
        tokens.truncate(budget.max(1));
        AnnotationPrompt {
            tokens,
            truncated: Some(Truncation {
                original_tokens: full.len(),
                dropped_bytes: dropped,
            }),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct AnnotationPrompt {
    pub tokens: Vec<u32>,
    pub truncated: Option<Truncation>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Truncation {
    pub original_tokens: usize,
    pub dropped_bytes: usize,
}

fn model_id(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let size = f.metadata()?.len();
    let mut head = vec![0u8; 1 << 20];
    let n = f.read(&mut head)?;
    head.truncate(n);
    head.extend_from_slice(&size.to_le_bytes());
    let hash = automaldesc_common::sha256_hex(&head);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(format!("{name}@{}", &hash[..16]))
}

/// The calibration written beside a trained adapter: the P(malicious) threshold that
/// balanced the validation classes best, and the label-logit shift that moves it to 0.5.
pub const CALIBRATION_FILE: &str = "label_calibration.json";

/// The label-logit shift of a trained adapter's calibration file, 0 when it has none (an
/// adapter trained elsewhere).
fn read_label_bias(dir: &Path) -> Result<f32, RuntimeError> {
    let path = dir.join(CALIBRATION_FILE);
    let invalid = |reason: String| RuntimeError::Invalid {
        path: path.display().to_string(),
        reason,
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0.0),
        Err(e) => return Err(invalid(e.to_string())),
    };
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    v["label_bias"]
        .as_f64()
        .map(|b| b as f32)
        .filter(|b| b.is_finite())
        .ok_or_else(|| invalid("no finite label_bias".into()))
}

/// The chat template of a `tokenizer_config.json`: a string, or a list of named templates
/// of which the one named `default` is used.
fn hf_chat_template(text: &str) -> Result<Option<String>, serde_json::Error> {
    let v: serde_json::Value = serde_json::from_str(text)?;
    Ok(match v.get("chat_template") {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Array(list)) => list
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
        _ => None,
    })
}

/// Keeps freed memory in the process heap instead of handing it back to the kernel. The
/// decoder allocates its activations afresh at every step (up to megabytes each); glibc
/// serves allocations over 128 KiB with `mmap` and unmaps them on free, so every step paid
/// page faults to zero fresh pages (measured: about 8% of a batch-32 decode step). Call once
/// at process start; a no-op off glibc.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only changes allocator tunables; 32 MiB is glibc's largest accepted
    // mmap threshold on 64-bit targets.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}
