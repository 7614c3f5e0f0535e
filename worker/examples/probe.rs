use automaldesc_worker::kernels::linear::{linear, pack};
use std::time::Instant;

fn main() {
    let (k, n, layers) = (576usize, 3072usize, 30usize);
    let packed: Vec<Vec<f32>> = (0..layers)
        .map(|l| {
            let w: Vec<f32> = (0..k * n)
                .map(|i| ((i * 7919 + l) % 1000) as f32 / 1000.0 - 0.5)
                .collect();
            pack(&w, k, n)
        })
        .collect();
    for &m in &[1usize, 3, 8, 11, 16, 24, 32, 64, 512] {
        let x: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.1).collect();
        let mut out = vec![0f32; m * n];
        let reps = if m > 64 { 1 } else { 5 };
        let t = Instant::now();
        for _ in 0..reps {
            for l in 0..layers {
                linear(&x, m, k, &packed[l], n, &mut out);
            }
        }
        let s = t.elapsed().as_secs_f64() / (reps * layers) as f64;
        println!(
            "m={m}: {:.3} ms, {:.0} GFLOP/s, {:.1} GB/s",
            s * 1e3,
            2.0 * (m * k * n) as f64 / s / 1e9,
            (k * n * 4) as f64 / s / 1e9
        );
    }
}
