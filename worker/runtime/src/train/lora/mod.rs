//! LoRA adapters on the linear layers of the Llama decoder: for a projection `W` (`[in, out]`
//! here, `x · W`), the adapted layer computes `x · W + (alpha / r) · (x · A) · B` with `A`
//! `[in, r]` and `B` `[r, out]`. The base weights stay frozen; only `A` and `B` train. `A`
//! starts uniform in ±1/√in and `B` at zero, so an untrained adapter changes nothing.
//!
//! Adapters are kept on the host as plain `f32` vectors (they are small: 2.0 M values at
//! rank 8 on SmolLM2-135M), which makes the optimizer, checkpoints and the PEFT files exact
//! and simple. The PEFT layout names each projection as Hugging Face does
//! (`base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`, `[r, in]`;
//! `...lora_B.weight`, `[out, r]`) in `adapter_model.safetensors`, beside an
//! `adapter_config.json`.

use burn::tensor::{Device, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::model::{Llama, LlamaConfig, Weight};
use crate::safetensors::SafetensorsError;

mod peft;

/// A projection of a decoder block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Proj {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Proj {
    pub const ALL: [Proj; 7] = [
        Proj::Q,
        Proj::K,
        Proj::V,
        Proj::O,
        Proj::Gate,
        Proj::Up,
        Proj::Down,
    ];

    /// The module name in Hugging Face checkpoints (and PEFT's `target_modules`).
    pub fn hf_name(self) -> &'static str {
        match self {
            Proj::Q => "q_proj",
            Proj::K => "k_proj",
            Proj::V => "v_proj",
            Proj::O => "o_proj",
            Proj::Gate => "gate_proj",
            Proj::Up => "up_proj",
            Proj::Down => "down_proj",
        }
    }

    fn hf_path(self) -> &'static str {
        match self {
            Proj::Q | Proj::K | Proj::V | Proj::O => "self_attn",
            _ => "mlp",
        }
    }

    fn from_hf_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.hf_name() == name)
    }

    /// `(in, out)` of the projection.
    pub fn dims(self, c: &LlamaConfig) -> (usize, usize) {
        let (h, hd) = (c.hidden_size, c.head_dim);
        match self {
            Proj::Q => (h, c.num_heads * hd),
            Proj::K | Proj::V => (h, c.num_kv_heads * hd),
            Proj::O => (c.num_heads * hd, h),
            Proj::Gate | Proj::Up => (h, c.intermediate_size),
            Proj::Down => (c.intermediate_size, h),
        }
    }

    /// Where the projection's columns sit in the fused weight that holds it, and that
    /// weight's total width: Q|K|V share `wqkv`, gate|up share `w_gate_up`.
    pub fn columns(self, c: &LlamaConfig) -> (usize, usize) {
        let (q, kv) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        let ffn = c.intermediate_size;
        match self {
            Proj::Q => (0, q + 2 * kv),
            Proj::K => (q, q + 2 * kv),
            Proj::V => (q + kv, q + 2 * kv),
            Proj::Gate => (0, 2 * ffn),
            Proj::Up => (ffn, 2 * ffn),
            Proj::O => (0, c.hidden_size),
            Proj::Down => (0, c.hidden_size),
        }
    }
}

/// Which decoder blocks carry adapters: `"all"`, `"top:K"` (the last K blocks) or an
/// explicit list of block indices.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LayerSet {
    Named(String),
    List(Vec<usize>),
}

impl Default for LayerSet {
    fn default() -> Self {
        LayerSet::Named("all".into())
    }
}

impl LayerSet {
    pub fn all() -> Self {
        Self::default()
    }

    pub fn top(k: usize) -> Self {
        LayerSet::Named(format!("top:{k}"))
    }

    /// The adapted block indices, ascending, for a model of `num_layers` blocks; an error
    /// (naming the `layers` key) for `top:0`, an index the model lacks, or an unknown name.
    pub fn resolve(&self, num_layers: usize) -> Result<Vec<usize>, AdapterError> {
        let bad = |why: String| AdapterError::Invalid(format!("`layers`: {why}"));
        let mut out = match self {
            LayerSet::Named(s) if s == "all" => (0..num_layers).collect(),
            LayerSet::Named(s) => {
                let k: usize = s
                    .strip_prefix("top:")
                    .and_then(|k| k.parse().ok())
                    .ok_or_else(|| bad(format!("{s:?} is not \"all\", \"top:K\" or a list")))?;
                if k == 0 {
                    return Err(bad(format!("{s:?} needs K of at least 1")));
                }
                // The top K blocks, or all of them on a model with fewer.
                (num_layers.saturating_sub(k)..num_layers).collect()
            }
            LayerSet::List(v) => {
                if let Some(l) = v.iter().find(|&&l| l >= num_layers) {
                    return Err(bad(format!(
                        "block {l} does not exist (the model has {num_layers}: 0..={})",
                        num_layers - 1
                    )));
                }
                v.clone()
            }
        };
        out.sort_unstable();
        out.dedup();
        if out.is_empty() {
            return Err(bad("the list is empty".into()));
        }
        Ok(out)
    }
}

/// Adapter hyperparameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f32,
    pub dropout: f32,
    pub targets: Vec<Proj>,
    /// The blocks that carry adapters (default: all).
    #[serde(default)]
    pub layers: LayerSet,
    /// A label head: a linear readout of the final hidden state added to the malicious
    /// label's logit at the label choice only (what a linear probe does), trained with the
    /// adapters and kept beside them (`label_head.safetensors`).
    #[serde(default)]
    pub label_head: bool,
    /// A language head: one readout per language added to its logit at the language choice
    /// (one language against the rest), refitted at every epoch's end; kept in the same file.
    #[serde(default)]
    pub language_head: bool,
}

impl LoraConfig {
    /// The published V1 adapter: rank 8, alpha 16, dropout 0.05, all linear layers.
    pub fn v1() -> Self {
        Self {
            rank: 8,
            alpha: 16.0,
            dropout: 0.05,
            targets: Proj::ALL.to_vec(),
            layers: LayerSet::all(),
            label_head: false,
            language_head: false,
        }
    }

    /// The published V2 adapter: rank 16, alpha 32, dropout 0.1.
    pub fn v2() -> Self {
        Self {
            rank: 16,
            alpha: 32.0,
            dropout: 0.1,
            targets: Proj::ALL.to_vec(),
            layers: LayerSet::all(),
            label_head: false,
            language_head: false,
        }
    }

    pub fn scale(&self) -> f32 {
        self.alpha / self.rank as f32
    }
}

/// One projection's adapter, row-major: `a` is `[in, r]`, `b` is `[r, out]`.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraPair {
    pub proj: Proj,
    pub inp: usize,
    pub out: usize,
    pub a: Vec<f32>,
    pub b: Vec<f32>,
}

/// An adapter for every block: `layers[l]` holds one pair per target, in target order.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraWeights {
    pub config: LoraConfig,
    pub layers: Vec<Vec<LoraPair>>,
    /// The label head's weights (`hidden` values) and bias, when the config has one.
    pub label_head: Option<Vec<f32>>,
    /// The language head: per language (in `Language::ALL` order) `hidden` weights and a
    /// bias. Refitted, not trained by gradient: not part of [`LoraWeights::flatten`].
    pub language_head: Option<Vec<f32>>,
}

/// File of the label head in an adapter directory (PEFT ignores it).
pub const LABEL_HEAD_FILE: &str = "label_head.safetensors";

#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    #[error(transparent)]
    Safetensors(#[from] SafetensorsError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("adapter {0}")]
    Invalid(String),
}

impl LoraWeights {
    /// A fresh adapter: `A` uniform in ±1/√in from `seed`, `B` zero. Blocks outside
    /// `config.layers` get no pairs.
    pub fn init(config: &LoraConfig, model: &LlamaConfig, seed: u64) -> Result<Self, AdapterError> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let r = config.rank;
        let adapted = config.layers.resolve(model.num_layers)?;
        let layers = (0..model.num_layers)
            .map(|l| {
                if !adapted.contains(&l) {
                    return Vec::new();
                }
                config
                    .targets
                    .iter()
                    .map(|&proj| {
                        let (inp, out) = proj.dims(model);
                        let bound = 1.0 / (inp as f32).sqrt();
                        LoraPair {
                            proj,
                            inp,
                            out,
                            a: (0..inp * r)
                                .map(|_| (rng.random::<f32>() * 2.0 - 1.0) * bound)
                                .collect(),
                            b: vec![0.0; r * out],
                        }
                    })
                    .collect()
            })
            .collect();
        Ok(Self {
            config: config.clone(),
            layers,
            label_head: config.label_head.then(|| vec![0.0; model.hidden_size + 1]),
            language_head: config
                .language_head
                .then(|| vec![0.0; 5 * (model.hidden_size + 1)]),
        })
    }

    /// The lowest block that carries an adapter (the blocks below it are frozen as a whole).
    pub fn first_adapted_layer(&self) -> usize {
        self.layers
            .iter()
            .position(|pairs| !pairs.is_empty())
            .unwrap_or(self.layers.len())
    }

    /// The adapted block indices.
    pub fn adapted_layers(&self) -> Vec<usize> {
        (0..self.layers.len())
            .filter(|&l| !self.layers[l].is_empty())
            .collect()
    }

    pub fn num_params(&self) -> usize {
        self.pairs().map(|p| p.a.len() + p.b.len()).sum::<usize>()
            + self.label_head.as_ref().map_or(0, Vec::len)
    }

    pub fn pairs(&self) -> impl Iterator<Item = &LoraPair> {
        self.layers.iter().flatten()
    }

    pub fn pairs_mut(&mut self) -> impl Iterator<Item = &mut LoraPair> {
        self.layers.iter_mut().flatten()
    }

    /// The adapter's values in one vector (each pair's `a` then `b`, in order).
    pub fn flatten(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.num_params());
        for p in self.pairs() {
            out.extend_from_slice(&p.a);
            out.extend_from_slice(&p.b);
        }
        if let Some(h) = &self.label_head {
            out.extend_from_slice(h);
        }
        out
    }

    /// Sets the values from [`LoraWeights::flatten`]'s layout.
    pub fn set_flat(&mut self, flat: &[f32]) {
        assert_eq!(flat.len(), self.num_params(), "flat adapter size");
        let mut at = 0;
        for p in self.pairs_mut() {
            let (na, nb) = (p.a.len(), p.b.len());
            p.a.copy_from_slice(&flat[at..at + na]);
            p.b.copy_from_slice(&flat[at + na..at + na + nb]);
            at += na + nb;
        }
        if let Some(h) = &mut self.label_head {
            let n = h.len();
            h.copy_from_slice(&flat[at..at + n]);
        }
    }

    /// Device tensors for a forward pass; with `trainable`, they require gradients.
    pub fn tensors(&self, device: &Device, trainable: bool) -> LoraTensors {
        let r = self.config.rank;
        let make = |data: &[f32], shape: [usize; 2]| {
            let t = Tensor::<2>::from_data(TensorData::new(data.to_vec(), shape), device);
            if trainable {
                t.require_grad()
            } else {
                t
            }
        };
        LoraTensors {
            language_head: self.language_head.as_ref().map(|h| {
                let rows = h.len() / 5;
                Tensor::<2>::from_data(TensorData::new(h.clone(), [5, rows]), device)
            }),
            label_head: self.label_head.as_ref().map(|h| {
                let t = Tensor::<1>::from_data(TensorData::new(h.clone(), [h.len()]), device);
                if trainable {
                    t.require_grad()
                } else {
                    t
                }
            }),
            scale: self.config.scale(),
            layers: self
                .layers
                .iter()
                .map(|pairs| {
                    pairs
                        .iter()
                        .map(|p| (p.proj, make(&p.a, [p.inp, r]), make(&p.b, [r, p.out])))
                        .collect()
                })
                .collect(),
        }
    }

    /// Adds `scale · A · B` into the model's weights: the merged model computes what the
    /// base model with this adapter computes. The model must be unpacked (plain weights).
    pub fn merge_into(&self, model: &mut Llama) -> Result<(), AdapterError> {
        let c = model.config.clone();
        let scale = self.config.scale();
        let r = self.config.rank;
        for (block, pairs) in model.blocks.iter_mut().zip(&self.layers) {
            for p in pairs {
                let w = match p.proj {
                    Proj::Q | Proj::K | Proj::V => &mut block.attn.wqkv,
                    Proj::O => &mut block.attn.wo,
                    Proj::Gate | Proj::Up => &mut block.ffn.w_gate_up,
                    Proj::Down => &mut block.ffn.w_down,
                };
                let Weight::Plain(param) = w else {
                    return Err(AdapterError::Invalid(
                        "merging needs plain weights (unpack the model first)".into(),
                    ));
                };
                let tensor = param.val();
                let device = tensor.device();
                let [inp, width] = tensor.dims();
                let mut data = tensor
                    .into_data()
                    .convert::<f32>()
                    .try_into_vec::<f32>()
                    .map_err(|e| AdapterError::Invalid(format!("{e:?}")))?;
                let (col0, _) = p.proj.columns(&c);
                for i in 0..inp {
                    let a_row = &p.a[i * r..(i + 1) * r];
                    let row = &mut data[i * width + col0..i * width + col0 + p.out];
                    for (k, &a) in a_row.iter().enumerate() {
                        let b_row = &p.b[k * p.out..(k + 1) * p.out];
                        for (o, &b) in row.iter_mut().zip(b_row) {
                            *o += scale * a * b;
                        }
                    }
                }
                *w = Weight::plain(data, [inp, width], &device);
            }
        }
        Ok(())
    }
}

/// An adapter's tensors on a device: per layer, `(projection, A, B)`.
pub struct LoraTensors {
    pub scale: f32,
    pub layers: Vec<Vec<(Proj, Tensor<2>, Tensor<2>)>>,
    /// The label head `[hidden + 1]` (weights, then the bias).
    pub label_head: Option<Tensor<1>>,
    /// The language head `[5, hidden + 1]` (not trained by gradient).
    pub language_head: Option<Tensor<2>>,
}

impl LoraTensors {
    /// Gradients of every `A` and `B`, flattened as [`LoraWeights::flatten`] lays them out.
    pub fn grads(&self, grads: &burn::tensor::Gradients) -> Vec<f32> {
        let mut out = Vec::new();
        for (_, a, b) in self.layers.iter().flatten() {
            for t in [a, b] {
                let n = t.dims()[0] * t.dims()[1];
                match t.grad(grads) {
                    Some(g) => out.extend(
                        g.into_data()
                            .convert::<f32>()
                            .try_into_vec::<f32>()
                            .expect("f32 gradient"),
                    ),
                    // An unused adapter gets a zero gradient.
                    None => out.extend(std::iter::repeat_n(0.0, n)),
                }
            }
        }
        if let Some(h) = &self.label_head {
            match h.grad(grads) {
                Some(g) => out.extend(
                    g.into_data()
                        .convert::<f32>()
                        .try_into_vec::<f32>()
                        .expect("f32 gradient"),
                ),
                None => out.extend(std::iter::repeat_n(0.0, h.dims()[0])),
            }
        }
        out
    }
}
