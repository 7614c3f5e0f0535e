//! RMSNorm and SwiGLU of LoRA training, each one operation with its own backward on the
//! autodiff device over flex. Composed from burn ops, RMSNorm is six operations (square,
//! mean, add, root, reciprocal, two products) and SwiGLU five (two column views, sigmoid,
//! two products), each a pass over its tensor forward and more backward, most of them
//! keeping their own copy for the backward. Here the forward is the inference kernel of
//! `cpu` and the backward one pass over the rows; each keeps only its input. The norm
//! weights are frozen like the linear ones: no gradient reaches them.
//!
//! The burn-op versions (`model::reference`, `burn::tensor::activation::silu`) stay the
//! reference and the path of every other device; tests compare outputs and input
//! gradients with them.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex};
use burn::tensor::Tensor;
use rayon::prelude::*;

use super::cpu::{exp, fmadd, has_fma, simd_dispatch};
use super::{contiguous, new_tensor, slice, FusedOps};

/// Rows per parallel task.
const ROWS_PER_TASK: usize = 16;

#[backend_extension(Flex, Autodiff)]
pub trait PointwiseOps: Backend {
    /// `x / rms(x) * weight` for every row of `x` `[rows, hidden]`; `weight` is frozen.
    fn train_rms_norm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        eps: f32,
    ) -> FloatTensor<Self>;

    /// `silu(gate) * up` of `[rows, 2 * ffn]` (gate columns first) → `[rows, ffn]`.
    fn train_swiglu(gate_up: FloatTensor<Self>) -> FloatTensor<Self>;
}

impl PointwiseOps for Flex {
    fn train_rms_norm(x: FlexTensor, weight: FlexTensor, eps: f32) -> FlexTensor {
        <Flex as FusedOps>::fused_rms_norm(x, weight, eps)
    }

    fn train_swiglu(gate_up: FlexTensor) -> FlexTensor {
        <Flex as FusedOps>::fused_swiglu(gate_up)
    }
}

/// `dx` of rows of RMSNorm: `dx = r·w⊙dy − x · r³/n · Σ(dy⊙w⊙x)`, `r = 1/√(mean(x²)+eps)`.
#[inline(always)]
fn rms_norm_grad_body<const FMA: bool>(x: &[f32], dy: &[f32], w: &[f32], eps: f32, dx: &mut [f32]) {
    let n = w.len();
    let rows = x
        .chunks_exact(n)
        .zip(dy.chunks_exact(n))
        .zip(dx.chunks_exact_mut(n));
    for ((x, dy), dx) in rows {
        let (mut square, mut weighted) = (0f32, 0f32);
        for ((&xi, &di), &wi) in x.iter().zip(dy).zip(w) {
            square = fmadd::<FMA>(xi, xi, square);
            weighted = fmadd::<FMA>(di * wi, xi, weighted);
        }
        let r = 1.0 / (square / n as f32 + eps).sqrt();
        let along = weighted * r * r * r / n as f32;
        for (((o, &xi), &di), &wi) in dx.iter_mut().zip(x).zip(dy).zip(w) {
            *o = fmadd::<FMA>(r * wi, di, -xi * along);
        }
    }
}

simd_dispatch!(fn rms_norm_grad(x: &[f32], dy: &[f32], w: &[f32], eps: f32, dx: &mut [f32]) => rms_norm_grad_body);

/// The input gradient of RMSNorm rows `x` `[rows, hidden]` for the output gradient `dy`.
pub fn rms_norm_backward(x: &[f32], dy: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let chunk = weight.len() * ROWS_PER_TASK;
    let mut dx = vec![0f32; x.len()];
    x.par_chunks(chunk)
        .zip(dy.par_chunks(chunk))
        .zip(dx.par_chunks_mut(chunk))
        .for_each(|((x, dy), dx)| rms_norm_grad(x, dy, weight, eps, dx));
    dx
}

/// `d(gate|up)` of rows of SwiGLU: `dgate = dy·up·σ(g)(1 + g(1 − σ(g)))`,
/// `dup = dy·g·σ(g)`.
#[inline(always)]
fn swiglu_grad_body<const FMA: bool>(gate_up: &[f32], dy: &[f32], ffn: usize, d: &mut [f32]) {
    let rows = gate_up
        .chunks_exact(2 * ffn)
        .zip(dy.chunks_exact(ffn))
        .zip(d.chunks_exact_mut(2 * ffn));
    for ((gu, dy), d) in rows {
        let (gate, up) = gu.split_at(ffn);
        let (d_gate, d_up) = d.split_at_mut(ffn);
        for ((((&g, &u), &dyi), dg), du) in gate.iter().zip(up).zip(dy).zip(d_gate).zip(d_up) {
            let sigma = 1.0 / (1.0 + exp(-g));
            *du = dyi * g * sigma;
            *dg = dyi * u * sigma * fmadd::<FMA>(g, 1.0 - sigma, 1.0);
        }
    }
}

simd_dispatch!(fn swiglu_grad(gate_up: &[f32], dy: &[f32], ffn: usize, d: &mut [f32]) => swiglu_grad_body);

/// The gradient of SwiGLU's input `[rows, 2 * ffn]` for the output gradient `dy`.
pub fn swiglu_backward(gate_up: &[f32], dy: &[f32], ffn: usize) -> Vec<f32> {
    let mut d = vec![0f32; gate_up.len()];
    gate_up
        .par_chunks(2 * ffn * ROWS_PER_TASK)
        .zip(dy.par_chunks(ffn * ROWS_PER_TASK))
        .zip(d.par_chunks_mut(2 * ffn * ROWS_PER_TASK))
        .for_each(|((gu, dy), d)| swiglu_grad(gu, dy, ffn, d));
    d
}

#[derive(Debug)]
struct RmsNormBackward {
    eps: f32,
}

impl Backward<Flex, 1> for RmsNormBackward {
    /// The input and the weight.
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [parent] = ops.parents;
        let dy = contiguous(grads.consume::<Flex>(&ops.node));
        if let Some(parent) = parent {
            let (x, w) = ops.state;
            let dx = rms_norm_backward(slice(&x), slice(&dy), slice(&w), self.eps);
            grads.register::<Flex>(parent.id, new_tensor(dx, x.layout().shape().to_vec()));
        }
    }
}

#[derive(Debug)]
struct SwigluBackward;

impl Backward<Flex, 1> for SwigluBackward {
    /// The input.
    type State = FlexTensor;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [parent] = ops.parents;
        let dy = contiguous(grads.consume::<Flex>(&ops.node));
        if let Some(parent) = parent {
            let gate_up = ops.state;
            let ffn = gate_up.layout().shape()[1] / 2;
            let d = swiglu_backward(slice(&gate_up), slice(&dy), ffn);
            grads.register::<Flex>(parent.id, new_tensor(d, gate_up.layout().shape().to_vec()));
        }
    }
}

impl<C: CheckpointStrategy> PointwiseOps for Autodiff<Flex, C> {
    fn train_rms_norm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        eps: f32,
    ) -> FloatTensor<Self> {
        // The weight is a constant: its graph node (if any) is dropped here.
        let weight = contiguous(weight.into_primitive());
        let (x, node) = x.into_parts();
        let x = contiguous(x);
        match (RmsNormBackward { eps })
            .prepare::<C>([node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = <Flex as PointwiseOps>::train_rms_norm(x.clone(), weight.clone(), eps);
                prep.finish((x, weight), y)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(<Flex as PointwiseOps>::train_rms_norm(x, weight, eps))
            }
        }
    }

    fn train_swiglu(gate_up: FloatTensor<Self>) -> FloatTensor<Self> {
        let (gate_up, node) = gate_up.into_parts();
        let gate_up = contiguous(gate_up);
        match SwigluBackward
            .prepare::<C>([node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = <Flex as PointwiseOps>::train_swiglu(gate_up.clone());
                prep.finish(gate_up, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(<Flex as PointwiseOps>::train_swiglu(gate_up)),
        }
    }
}

/// RMSNorm of every row of `x` with a frozen `weight` (see [`PointwiseOps`]).
pub fn rms_norm(x: Tensor<2>, weight: Tensor<1>, eps: f64) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as PointwiseOps>::train_rms_norm(
        x.into_dispatch(),
        weight.into_dispatch(),
        eps as f32,
    ))
}

/// `silu(gate) * up` of `[rows, 2 * ffn]` → `[rows, ffn]` (see [`PointwiseOps`]).
pub fn swiglu(gate_up: Tensor<2>) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as PointwiseOps>::train_swiglu(
        gate_up.into_dispatch(),
    ))
}

#[cfg(test)]
mod tests {
    use burn::tensor::activation::silu;
    use burn::tensor::{Device, Distribution, TensorData};

    use super::*;

    fn to_vec(t: Tensor<2>) -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap()
    }

    /// Output and input gradient of `op` on `x`, under a loss that weighs every output.
    fn run(
        x: &Tensor<2>,
        weigh: &Tensor<2>,
        op: impl Fn(Tensor<2>) -> Tensor<2>,
    ) -> (Vec<f32>, Vec<f32>) {
        let x = x.clone().require_grad();
        let y = op(x.clone());
        let grads = (y.clone() * weigh.clone()).sum().backward();
        (to_vec(y), to_vec(x.grad(&grads).expect("x has a gradient")))
    }

    fn assert_close(got: &(Vec<f32>, Vec<f32>), want: &(Vec<f32>, Vec<f32>), what: &str) {
        assert_eq!((got.0.len(), got.1.len()), (want.0.len(), want.1.len()));
        for (a, b) in got.0.iter().zip(&want.0).chain(got.1.iter().zip(&want.1)) {
            assert!(
                (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                "{what}: {a} vs {b}"
            );
        }
        assert!(got.1.iter().any(|g| g.abs() > 1e-3), "{what}: a gradient");
    }

    #[test]
    fn rms_norm_and_swiglu_give_the_reference_s_outputs_and_input_gradients() {
        let device = Device::flex().autodiff();
        // Rows across the 16-row tasks, widths off the vector lanes.
        for &(rows, width) in &[(1, 8), (37, 40), (70, 13)] {
            let x = Tensor::<2>::random([rows, width], Distribution::Uniform(-3.0, 3.0), &device);
            assert!(crate::kernels::frozen::native(&x));
            let w: Vec<f32> = (0..width).map(|i| 0.5 + (i % 7) as f32 * 0.3).collect();
            let w = Tensor::<1>::from_data(TensorData::new(w, [width]), &device);
            let weigh =
                Tensor::<2>::random([rows, width], Distribution::Uniform(-1.0, 1.0), &device);
            let fused = run(&x, &weigh, |x| rms_norm(x, w.clone(), 1e-5));
            let reference = run(&x, &weigh, |x| {
                crate::model::reference::rms_norm(x, &w, 1e-5)
            });
            assert_close(&fused, &reference, "rms_norm");

            // An odd width makes the input a strided view of the first 2 * ffn columns.
            let ffn = width / 2;
            let weigh = weigh.narrow(1, 0, ffn);
            let fused = run(&x, &weigh, |x| swiglu(x.narrow(1, 0, 2 * ffn)));
            let reference = run(&x, &weigh, |x| {
                silu(x.clone().narrow(1, 0, ffn)) * x.narrow(1, ffn, ffn)
            });
            assert_close(&fused, &reference, "swiglu");
            // Untracked, the forward alone.
            let plain = swiglu(x.clone().narrow(1, 0, 2 * ffn));
            assert_eq!(to_vec(plain), fused.0);
        }
    }
}
