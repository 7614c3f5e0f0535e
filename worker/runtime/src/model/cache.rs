//! Key/value cache with independent slots. Every slot holds one sequence and its own length,
//! so sequences of different lengths decode together and a finished slot can be refilled
//! without touching the others.

use burn::tensor::{Device, IndexingUpdateOp, Int, Tensor, TensorData};

use super::LlamaConfig;

pub struct KvCache {
    /// Per layer, flattened `[slots * kv_heads * capacity, head_dim]`, so one
    /// `select_assign` writes the new rows of every slot at its own position.
    k: Vec<Tensor<2>>,
    v: Vec<Tensor<2>>,
    lens: Vec<usize>,
    slots: usize,
    kv_heads: usize,
    head_dim: usize,
    capacity: usize,
}

impl KvCache {
    pub fn new(config: &LlamaConfig, slots: usize, capacity: usize, device: &Device) -> Self {
        let rows = slots * config.num_kv_heads * capacity;
        let zeros = || Tensor::<2>::zeros([rows, config.head_dim], device);
        Self {
            k: (0..config.num_layers).map(|_| zeros()).collect(),
            v: (0..config.num_layers).map(|_| zeros()).collect(),
            lens: vec![0; slots],
            slots,
            kv_heads: config.num_kv_heads,
            head_dim: config.head_dim,
            capacity,
        }
    }

    pub fn slots(&self) -> usize {
        self.slots
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Tokens stored in slot `s`.
    pub fn len(&self, s: usize) -> usize {
        self.lens[s]
    }

    pub fn is_empty(&self) -> bool {
        self.lens.iter().all(|&l| l == 0)
    }

    /// Room left in the fullest slot.
    pub fn room(&self) -> usize {
        self.capacity - self.lens.iter().copied().max().unwrap_or(0)
    }

    /// Writes the new keys and values `[slots, kv_heads, t, head_dim]` of `layer` after each
    /// slot's current length and returns the first `upto` positions of every slot,
    /// `[slots, kv_heads, upto, head_dim]`. Lengths move on only in `advance`, after the
    /// last layer.
    pub fn append(
        &mut self,
        layer: usize,
        k: Tensor<4>,
        v: Tensor<4>,
        upto: usize,
    ) -> (Tensor<4>, Tensor<4>) {
        let [b, h, t, d] = k.dims();
        assert!(
            self.lens.iter().all(|&l| l + t <= self.capacity),
            "kv cache overflow: capacity {}",
            self.capacity
        );
        let device = k.device();
        let idx = self.row_indices(t, &device);
        let k = k.reshape([b * h * t, d]);
        let v = v.reshape([b * h * t, d]);
        let (kc, vc) = self.take_layer(layer);
        self.k[layer] = kc.select_assign(0, idx.clone(), k, IndexingUpdateOp::Assign);
        self.v[layer] = vc.select_assign(0, idx, v, IndexingUpdateOp::Assign);
        (
            self.view(&self.k[layer], upto),
            self.view(&self.v[layer], upto),
        )
    }

    /// Takes the key and value tensors of `layer` out of the cache (for a kernel that
    /// updates them in place); `put_layer` gives them back.
    pub(crate) fn take_layer(&mut self, layer: usize) -> (Tensor<2>, Tensor<2>) {
        let device = self.k[layer].device();
        let d = self.head_dim;
        (
            std::mem::replace(&mut self.k[layer], Tensor::empty([0, d], &device)),
            std::mem::replace(&mut self.v[layer], Tensor::empty([0, d], &device)),
        )
    }

    pub(crate) fn put_layer(&mut self, layer: usize, k: Tensor<2>, v: Tensor<2>) {
        self.k[layer] = k;
        self.v[layer] = v;
    }

    /// Marks `t` more tokens as stored in each of `slots`.
    pub fn advance_slots(&mut self, slots: &[usize], t: usize) {
        for &s in slots {
            self.lens[s] += t;
        }
    }

    /// Marks `t` more tokens as stored in every slot.
    pub fn advance(&mut self, t: usize) {
        for l in &mut self.lens {
            *l += t;
        }
    }

    /// Copies slot `src` of `other` (all layers, its stored length) into slot `dst`.
    pub fn copy_slot_from(&mut self, dst: usize, other: &KvCache, src: usize) {
        let len = other.lens[src];
        assert!(
            len <= self.capacity,
            "kv cache overflow: capacity {}",
            self.capacity
        );
        let device = self.k[0].device();
        let mut from = Vec::with_capacity(self.kv_heads * len);
        let mut to = Vec::with_capacity(self.kv_heads * len);
        for h in 0..self.kv_heads {
            for p in 0..len {
                from.push(((src * other.kv_heads + h) * other.capacity + p) as i64);
                to.push(((dst * self.kv_heads + h) * self.capacity + p) as i64);
            }
        }
        let n = from.len();
        let from = Tensor::<1, Int>::from_data(TensorData::new(from, [n]), &device);
        let to = Tensor::<1, Int>::from_data(TensorData::new(to, [n]), &device);
        for layer in 0..self.k.len() {
            let rows_k = other.k[layer].clone().select(0, from.clone());
            let rows_v = other.v[layer].clone().select(0, from.clone());
            let (kc, vc) = self.take_layer(layer);
            self.k[layer] = kc.select_assign(0, to.clone(), rows_k, IndexingUpdateOp::Assign);
            self.v[layer] = vc.select_assign(0, to.clone(), rows_v, IndexingUpdateOp::Assign);
        }
        self.lens[dst] = len;
    }

    /// The keys and values of `layer` in a one-slot cache whose capacity is its length
    /// (a prompt's prefill cache): `[kv_heads, len, head_dim]` row-major each.
    pub(crate) fn layer_rows(&self, layer: usize) -> (Vec<f32>, Vec<f32>) {
        assert_eq!(self.slots, 1, "layer rows of a one-slot cache");
        let rows = |t: &Tensor<2>| {
            t.clone()
                .into_data()
                .try_into_vec::<f32>()
                .expect("the kv cache holds f32")
        };
        (rows(&self.k[layer]), rows(&self.v[layer]))
    }

    /// Replaces the keys and values of `layer` in a one-slot cache (see
    /// [`KvCache::layer_rows`]); lengths are unchanged.
    pub(crate) fn set_layer_rows(&mut self, layer: usize, k: Vec<f32>, v: Vec<f32>) {
        assert_eq!(self.slots, 1, "layer rows of a one-slot cache");
        let shape = [self.kv_heads * self.capacity, self.head_dim];
        assert_eq!(k.len(), shape[0] * shape[1], "layer rows of the wrong size");
        let device = self.k[layer].device();
        self.k[layer] = Tensor::from_data(TensorData::new(k, shape), &device);
        self.v[layer] = Tensor::from_data(TensorData::new(v, shape), &device);
    }

    fn row_indices(&self, t: usize, device: &Device) -> Tensor<1, Int> {
        let mut idx = Vec::with_capacity(self.slots * self.kv_heads * t);
        for s in 0..self.slots {
            for h in 0..self.kv_heads {
                let base = (s * self.kv_heads + h) * self.capacity + self.lens[s];
                idx.extend((0..t).map(|i| (base + i) as i64));
            }
        }
        let n = idx.len();
        Tensor::from_data(TensorData::new(idx, [n]), device)
    }

    fn view(&self, flat: &Tensor<2>, upto: usize) -> Tensor<4> {
        let full = flat
            .clone()
            .reshape([self.slots, self.kv_heads, self.capacity, self.head_dim]);
        if upto == self.capacity {
            full
        } else {
            full.narrow(2, 0, upto)
        }
    }
}
