//! PEFT's layout on disk: `adapter_config.json` (with `layers_to_transform` for a subset
//! of blocks) and `adapter_model.safetensors` (`...lora_A.weight` `[r, in]`,
//! `...lora_B.weight` `[out, r]`), and this project's heads beside them
//! (`label_head.safetensors`).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{AdapterError, LayerSet, LoraConfig, LoraPair, LoraWeights, Proj, LABEL_HEAD_FILE};
use crate::model::load::TensorSource;
use crate::model::LlamaConfig;
use crate::safetensors::{write_f32, SafeTensors};

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AdapterError + '_ {
    move |source| AdapterError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// PEFT's `adapter_config.json`, the fields this project reads and writes.
#[derive(Debug, Serialize, Deserialize)]
struct PeftConfig {
    peft_type: String,
    #[serde(default)]
    task_type: Option<String>,
    r: usize,
    lora_alpha: f32,
    #[serde(default)]
    lora_dropout: f32,
    target_modules: serde_json::Value,
    #[serde(default)]
    bias: Option<String>,
    #[serde(default)]
    fan_in_fan_out: bool,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    base_model_name_or_path: Option<String>,
    #[serde(default)]
    inference_mode: bool,
    /// The adapted blocks; absent or null means all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    layers_to_transform: Option<serde_json::Value>,
}

impl LoraWeights {
    fn peft_key(layer: usize, proj: Proj, which: &str) -> String {
        format!(
            "base_model.model.model.layers.{layer}.{}.{}.lora_{which}.weight",
            proj.hf_path(),
            proj.hf_name()
        )
    }

    /// Writes `adapter_config.json` and `adapter_model.safetensors` (PEFT's layout) into
    /// `dir`; `metadata` goes into the safetensors header.
    pub fn save_peft(
        &self,
        dir: &Path,
        base_model: &str,
        metadata: &BTreeMap<String, String>,
    ) -> Result<(), AdapterError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let r = self.config.rank;
        let config = PeftConfig {
            peft_type: "LORA".into(),
            task_type: Some("CAUSAL_LM".into()),
            r,
            lora_alpha: self.config.alpha,
            lora_dropout: self.config.dropout,
            target_modules: serde_json::json!(self
                .config
                .targets
                .iter()
                .map(|p| p.hf_name())
                .collect::<Vec<_>>()),
            bias: Some("none".into()),
            fan_in_fan_out: false,
            use_rslora: false,
            use_dora: false,
            base_model_name_or_path: Some(base_model.into()),
            inference_mode: true,
            layers_to_transform: (self.adapted_layers().len() != self.layers.len())
                .then(|| serde_json::json!(self.adapted_layers())),
        };
        let path = dir.join("adapter_config.json");
        let text = serde_json::to_string_pretty(&config)
            .map_err(|e| AdapterError::Invalid(e.to_string()))?;
        std::fs::write(&path, text).map_err(io(&path))?;
        // PEFT stores A as [r, in] and B as [out, r]: the transposes of ours.
        let mut owned = Vec::new();
        for (l, pairs) in self.layers.iter().enumerate() {
            for p in pairs {
                owned.push((
                    Self::peft_key(l, p.proj, "A"),
                    vec![r, p.inp],
                    transpose(&p.a, p.inp, r),
                ));
                owned.push((
                    Self::peft_key(l, p.proj, "B"),
                    vec![p.out, r],
                    transpose(&p.b, r, p.out),
                ));
            }
        }
        let tensors: Vec<(String, Vec<usize>, &[f32])> = owned
            .iter()
            .map(|(n, s, d)| (n.clone(), s.clone(), d.as_slice()))
            .collect();
        write_f32(&dir.join("adapter_model.safetensors"), &tensors, metadata)?;
        let mut heads: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
        if let Some(h) = &self.label_head {
            let hidden = h.len() - 1;
            heads.push(("weight".into(), vec![hidden], h[..hidden].to_vec()));
            heads.push(("bias".into(), vec![1], h[hidden..].to_vec()));
        }
        if let Some(h) = &self.language_head {
            let row = h.len() / 5;
            let weights: Vec<f32> = h.chunks(row).flat_map(|r| r[..row - 1].to_vec()).collect();
            let biases: Vec<f32> = h.chunks(row).map(|r| r[row - 1]).collect();
            heads.push(("language_weight".into(), vec![5, row - 1], weights));
            heads.push(("language_bias".into(), vec![5], biases));
        }
        if !heads.is_empty() {
            let views: Vec<(String, Vec<usize>, &[f32])> = heads
                .iter()
                .map(|(n, s, d)| (n.clone(), s.clone(), d.as_slice()))
                .collect();
            write_f32(&dir.join(LABEL_HEAD_FILE), &views, &BTreeMap::new())?;
        }
        Ok(())
    }

    /// Reads a PEFT LoRA adapter (trained here or elsewhere) for a model of `model`'s shape.
    pub fn load_peft(dir: &Path, model: &LlamaConfig) -> Result<Self, AdapterError> {
        let path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        let cfg: PeftConfig = serde_json::from_str(&text)
            .map_err(|e| AdapterError::Invalid(format!("{}: {e}", path.display())))?;
        if cfg.peft_type != "LORA" {
            return Err(AdapterError::Invalid(format!(
                "peft_type {:?} is not LORA",
                cfg.peft_type
            )));
        }
        if cfg.fan_in_fan_out || cfg.use_dora || cfg.use_rslora {
            return Err(AdapterError::Invalid(
                "fan_in_fan_out, DoRA and rsLoRA adapters are not supported".into(),
            ));
        }
        if cfg.bias.as_deref().is_some_and(|b| b != "none") {
            return Err(AdapterError::Invalid(format!(
                "bias {:?} is not supported",
                cfg.bias
            )));
        }
        let names: Vec<String> = match &cfg.target_modules {
            serde_json::Value::String(s) if s == "all-linear" => {
                Proj::ALL.iter().map(|p| p.hf_name().to_string()).collect()
            }
            serde_json::Value::Array(v) => v
                .iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect(),
            other => {
                return Err(AdapterError::Invalid(format!(
                    "target_modules {other} is not a list of module names"
                )))
            }
        };
        let mut targets = Vec::new();
        for n in &names {
            let p = Proj::from_hf_name(n).ok_or_else(|| {
                AdapterError::Invalid(format!("target module {n:?} is not a Llama projection"))
            })?;
            targets.push(p);
        }
        targets.sort();
        let layer_set = match &cfg.layers_to_transform {
            None | Some(serde_json::Value::Null) => LayerSet::all(),
            Some(serde_json::Value::Number(n)) => LayerSet::List(vec![n
                .as_u64()
                .ok_or_else(|| AdapterError::Invalid(format!("layers_to_transform {n}")))?
                as usize]),
            Some(serde_json::Value::Array(v)) => LayerSet::List(
                v.iter()
                    .map(|x| x.as_u64().map(|x| x as usize))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        AdapterError::Invalid(
                            "layers_to_transform is not a list of block indices".into(),
                        )
                    })?,
            ),
            Some(other) => {
                return Err(AdapterError::Invalid(format!(
                    "layers_to_transform {other} is not a block index or a list of them"
                )))
            }
        };
        let adapted = layer_set.resolve(model.num_layers)?;
        let config = LoraConfig {
            rank: cfg.r,
            alpha: cfg.lora_alpha,
            dropout: cfg.lora_dropout,
            targets,
            layers: layer_set,
            label_head: false,
            language_head: false,
        };
        let st = SafeTensors::open(&dir.join("adapter_model.safetensors"))?;
        let r = config.rank;
        let mut layers = Vec::new();
        for l in 0..model.num_layers {
            let mut pairs = Vec::new();
            if !adapted.contains(&l) {
                layers.push(pairs);
                continue;
            }
            for &proj in &config.targets {
                let (inp, out) = proj.dims(model);
                let read = |which: &str, shape: [usize; 2]| -> Result<Vec<f32>, AdapterError> {
                    let key = Self::peft_key(l, proj, which);
                    let got = st
                        .shape(&key)
                        .ok_or_else(|| AdapterError::Invalid(format!("missing tensor {key}")))?;
                    if got.as_slice() != shape {
                        return Err(AdapterError::Invalid(format!(
                            "{key} has shape {got:?}, the model needs {shape:?}"
                        )));
                    }
                    st.to_f32(&key)
                        .ok_or_else(|| AdapterError::Invalid(format!("unreadable tensor {key}")))
                };
                let a = transpose(&read("A", [r, inp])?, r, inp);
                let b = transpose(&read("B", [out, r])?, out, r);
                pairs.push(LoraPair {
                    proj,
                    inp,
                    out,
                    a,
                    b,
                });
            }
            layers.push(pairs);
        }
        let head_path = dir.join(LABEL_HEAD_FILE);
        let (label_head, language_head) = if head_path.exists() {
            read_heads(&head_path, model.hidden_size)?
        } else {
            (None, None)
        };
        let config = LoraConfig {
            label_head: label_head.is_some(),
            language_head: language_head.is_some(),
            ..config
        };
        Ok(Self {
            config,
            layers,
            label_head,
            language_head,
        })
    }
}

/// The heads in a `label_head.safetensors`: the label head (`weight` `[hidden]`, `bias`
/// `[1]`) and the language head (`language_weight` `[5, hidden]`, `language_bias` `[5]`),
/// each optional, as the flat layouts [`LoraWeights`] keeps.
#[allow(clippy::type_complexity)]
fn read_heads(
    path: &Path,
    hidden: usize,
) -> Result<(Option<Vec<f32>>, Option<Vec<f32>>), AdapterError> {
    let st = SafeTensors::open(path)?;
    let bad = |what: &str| AdapterError::Invalid(format!("{}: {what}", path.display()));
    let label = match (st.to_f32("weight"), st.to_f32("bias")) {
        (Some(w), Some(b)) if w.len() == hidden && b.len() == 1 => Some([w, b].concat()),
        (None, None) => None,
        _ => {
            return Err(bad(&format!(
                "`weight` must hold {hidden} values and `bias` one"
            )))
        }
    };
    let language = match (st.to_f32("language_weight"), st.to_f32("language_bias")) {
        (Some(w), Some(b)) if w.len() == 5 * hidden && b.len() == 5 => Some(
            (0..5)
                .flat_map(|l| {
                    let mut row = w[l * hidden..(l + 1) * hidden].to_vec();
                    row.push(b[l]);
                    row
                })
                .collect(),
        ),
        (None, None) => None,
        _ => {
            return Err(bad(&format!(
                "`language_weight` must be [5, {hidden}] and `language_bias` [5]"
            )))
        }
    };
    Ok((label, language))
}

/// `[rows, cols]` row-major to `[cols, rows]`.
fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for i in 0..rows {
        for j in 0..cols {
            out[j * rows + i] = x[i * cols + j];
        }
    }
    out
}
