//! Throughput of the decoder measured the way `llama-batched-bench` measures llama.cpp:
//! B sequences, each with its own `npp`-token prompt (prefill), then `ntg` decode steps
//! that produce one token for every sequence. Greedy argmax on the CPU is included in the
//! decode time, as a real decode step pays for it.

use std::time::Instant;

use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::model::{KvCache, Llama};

#[derive(Clone, Debug, Serialize)]
pub struct BatchedBenchRow {
    pub sequences: usize,
    pub npp: usize,
    pub ntg: usize,
    pub prefill_secs: f64,
    /// Prefill tokens per second (`S_PP`).
    pub prefill_tps: f64,
    pub decode_secs: f64,
    /// Decode tokens per second over all sequences (`S_TG`).
    pub decode_tps: f64,
    /// All tokens over all time (`S`).
    pub total_tps: f64,
}

pub fn batched_bench(
    model: &Llama,
    npp: usize,
    ntg: usize,
    sequences: usize,
    seed: u64,
) -> BatchedBenchRow {
    let device = model.device();
    let vocab = model.config.vocab_size as u32;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut cache = KvCache::new(&model.config, sequences, npp + ntg + 1, &device);
    let started = Instant::now();
    let mut last = Vec::with_capacity(sequences);
    for s in 0..sequences {
        let prompt: Vec<u32> = (0..npp).map(|_| rng.random_range(0..vocab)).collect();
        let mut single = KvCache::new(&model.config, 1, npp, &device);
        let h = model.forward(&prompt, npp, &mut single);
        let logits = model.logits(h.narrow(0, npp - 1, 1));
        last.push(argmax_rows(logits)[0]);
        cache.copy_slot_from(s, &single, 0);
    }
    let prefill_secs = started.elapsed().as_secs_f64();
    let started = Instant::now();
    for _ in 0..ntg {
        let h = model.forward(&last, 1, &mut cache);
        last = argmax_rows(model.logits(h));
    }
    let decode_secs = started.elapsed().as_secs_f64();
    let (pp, tg) = ((sequences * npp) as f64, (sequences * ntg) as f64);
    BatchedBenchRow {
        sequences,
        npp,
        ntg,
        prefill_secs,
        prefill_tps: pp / prefill_secs,
        decode_secs,
        decode_tps: tg / decode_secs,
        total_tps: (pp + tg) / (prefill_secs + decode_secs),
    }
}

fn argmax_rows(logits: burn::tensor::Tensor<2>) -> Vec<u32> {
    let [rows, vocab] = logits.dims();
    let flat = logits.into_data().try_to_vec::<f32>().unwrap_or_default();
    (0..rows)
        .map(|r| {
            let row = &flat[r * vocab..(r + 1) * vocab];
            (0..vocab)
                .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                .unwrap_or(0) as u32
        })
        .collect()
}

/// One matrix-product shape timed on one path.
#[derive(Clone, Debug, Serialize)]
pub struct MatmulRow {
    pub path: &'static str,
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub gflops: f64,
}

/// Deterministic values in [-1, 1).
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..len).map(|_| rng.random_range(-1.0..1.0)).collect()
}

/// Best-of-`reps` GFLOP/s of `run` for an `m x k x n` product (after one warm-up call).
fn best_rate(m: usize, k: usize, n: usize, reps: usize, mut run: impl FnMut()) -> f64 {
    run();
    let flops = 2.0 * (m * k * n) as f64;
    (0..reps)
        .map(|_| {
            let started = Instant::now();
            run();
            flops / started.elapsed().as_secs_f64() / 1e9
        })
        .fold(0.0, f64::max)
}

/// The machine's matrix-product rates: burn's general f32 matmul (the `gemm` crate, the
/// reference peak), the packed-panel kernel `x · W` of inference, and the transposed-panel
/// kernel `dY · Wᵀ` of the training backward, each on the calling thread pool.
pub fn matmul_rates(shapes: &[(usize, usize, usize)], reps: usize) -> Vec<MatmulRow> {
    use crate::kernels::linear;
    use burn::tensor::{Device, Tensor, TensorData};
    let device = Device::flex();
    let mut rows = Vec::new();
    for &(m, k, n) in shapes {
        let x = values(m * k, 1);
        let w = values(k * n, 2);
        let xt = Tensor::<2>::from_data(TensorData::new(x.clone(), [m, k]), &device);
        let wt = Tensor::<2>::from_data(TensorData::new(w.clone(), [k, n]), &device);
        let gflops = best_rate(m, k, n, reps, || {
            let _ = xt.clone().matmul(wt.clone()).into_data();
        });
        rows.push(MatmulRow {
            path: "burn matmul",
            m,
            k,
            n,
            gflops,
        });
        let packed = linear::pack(&w, k, n);
        let mut out = vec![0f32; m * n];
        let gflops = best_rate(m, k, n, reps, || {
            linear::linear(&x, m, k, &packed, n, &mut out);
        });
        rows.push(MatmulRow {
            path: "packed x·W",
            m,
            k,
            n,
            gflops,
        });
        // dX = dY · Wᵀ for a layer W `[n, k]` (in n, out k): dY `[m, k]`, result `[m, n]`.
        let w_layer = values(n * k, 3);
        let packed_t = linear::pack_transposed(&w_layer, n, k);
        let gflops = best_rate(m, k, n, reps, || {
            linear::linear(&x, m, k, &packed_t, n, &mut out);
        });
        rows.push(MatmulRow {
            path: "packed dY·Wᵀ",
            m,
            k,
            n,
            gflops,
        });
    }
    rows
}
