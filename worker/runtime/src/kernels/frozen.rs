//! The linear layers of the frozen base model during LoRA training, on the autodiff device
//! over flex. Forward `x · W` runs the packed-panel kernel of inference; the backward needs
//! only the input gradient `dX = dY · Wᵀ` (the base weights are frozen), which runs the same
//! kernel over `Wᵀ`, packed once when the training model is built. Burn's generic path
//! (a general matmul that repacks its right-hand side on every call, forward and backward)
//! stays the reference, and the path of every other device.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, DispatchDevice, Flex};
use burn::tensor::{DType, Device, Tensor};

use super::FusedOps;

#[backend_extension(Flex, Autodiff)]
pub trait FrozenLinearOps: Backend {
    /// `x · W` `[rows, out_features]` for a frozen `W` given packed twice: `panels`
    /// (`[panels(out), in, PANEL]`, see `linear::pack`) for the forward and `panels_t`
    /// (`[panels(in), out, PANEL]`, `Wᵀ` packed) for the input gradient. No gradient
    /// reaches `W`.
    fn frozen_linear(
        x: FloatTensor<Self>,
        panels: FloatTensor<Self>,
        panels_t: FloatTensor<Self>,
        out_features: usize,
    ) -> FloatTensor<Self>;
}

impl FrozenLinearOps for Flex {
    fn frozen_linear(
        x: FlexTensor,
        panels: FlexTensor,
        _panels_t: FlexTensor,
        out_features: usize,
    ) -> FlexTensor {
        <Flex as FusedOps>::fused_linear(x, panels, out_features)
    }
}

/// The backward step: `dX = dY · Wᵀ` with `Wᵀ` packed (the state).
#[derive(Debug)]
struct FrozenLinearBackward {
    in_features: usize,
}

impl Backward<Flex, 1> for FrozenLinearBackward {
    type State = FlexTensor;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        if let Some(x) = x {
            let dx = <Flex as FusedOps>::fused_linear(dy, ops.state, self.in_features);
            grads.register::<Flex>(x.id, dx);
        }
    }
}

impl<C: CheckpointStrategy> FrozenLinearOps for Autodiff<Flex, C> {
    fn frozen_linear(
        x: FloatTensor<Self>,
        panels: FloatTensor<Self>,
        panels_t: FloatTensor<Self>,
        out_features: usize,
    ) -> FloatTensor<Self> {
        // The weights are constants: their graph nodes (if any) are dropped here.
        let (panels, panels_t) = (panels.into_primitive(), panels_t.into_primitive());
        let in_features = panels.layout().shape()[1];
        let (x, node) = x.into_parts();
        let step = FrozenLinearBackward { in_features };
        match step.prepare::<C>([node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let y = <Flex as FrozenLinearOps>::frozen_linear(
                    x,
                    panels,
                    panels_t.clone(),
                    out_features,
                );
                prep.finish(panels_t, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(<Flex as FrozenLinearOps>::frozen_linear(
                x,
                panels,
                panels_t,
                out_features,
            )),
        }
    }
}

/// Whether tensors on `device` take this path: an autodiff device over flex.
pub fn native_device(device: &Device) -> bool {
    match device.as_dispatch() {
        DispatchDevice::Autodiff(inner) => matches!(&**inner, DispatchDevice::Flex(_)),
        _ => false,
    }
}

/// Whether `x` takes this path: f32 on an autodiff device over flex.
pub fn native(x: &Tensor<2>) -> bool {
    native_device(&x.device()) && x.dtype() == DType::F32
}

/// `x · W` for a frozen `W` (see [`FrozenLinearOps::frozen_linear`]).
pub fn frozen_linear(
    x: Tensor<2>,
    panels: Tensor<3>,
    panels_t: Tensor<3>,
    out_features: usize,
) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as FrozenLinearOps>::frozen_linear(
        x.into_dispatch(),
        panels.into_dispatch(),
        panels_t.into_dispatch(),
        out_features,
    ))
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Distribution, TensorData};

    use super::*;
    use crate::kernels::linear::{pack, pack_transposed};

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n as u32)
            .map(|i| (((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.5) - 1.0)
            .collect()
    }

    #[test]
    fn the_frozen_linear_matches_burn_s_matmul_forward_and_backward() {
        // Ragged shapes: rows and both widths off the 8-row tile and the 32-column panel.
        let device = Device::flex().autodiff();
        assert!(native_device(&device) && !native_device(&Device::flex()));
        for &(m, k, n) in &[(1, 7, 5), (13, 40, 70), (37, 64, 33), (64, 96, 96)] {
            let w = values(k * n, 1);
            let panels = Tensor::<3>::from_data(
                TensorData::new(pack(&w, k, n), [n.div_ceil(32), k, 32]),
                &device,
            );
            let panels_t = Tensor::<3>::from_data(
                TensorData::new(pack_transposed(&w, k, n), [k.div_ceil(32), n, 32]),
                &device,
            );
            let plain = Tensor::<2>::from_data(TensorData::new(w.clone(), [k, n]), &device);
            let x = Tensor::<2>::random([m, k], Distribution::Uniform(-1.0, 1.0), &device);
            // An upstream gradient that is not all ones: the loss weighs every output.
            let weigh = Tensor::<2>::random([m, n], Distribution::Uniform(-1.0, 1.0), &device);
            let run = |frozen: bool| {
                let x = x.clone().require_grad();
                let y = match frozen {
                    true => frozen_linear(x.clone(), panels.clone(), panels_t.clone(), n),
                    false => x.clone().matmul(plain.clone()),
                };
                let loss = (y.clone() * weigh.clone()).sum();
                let grads = loss.backward();
                let dx = x.grad(&grads).expect("x has a gradient");
                (to_vec(y.into_data()), to_vec(dx.into_data()))
            };
            let (y_ref, dx_ref) = run(false);
            let (y, dx) = run(true);
            assert_eq!((y.len(), dx.len()), (m * n, m * k));
            for (a, b) in y.iter().zip(&y_ref).chain(dx.iter().zip(&dx_ref)) {
                assert!(
                    (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                    "{m}x{k}x{n}: {a} vs {b}"
                );
            }
            assert!(dx.iter().any(|v| v.abs() > 1e-3));
            // Without a gradient to track, the forward alone.
            let y = frozen_linear(x.clone(), panels.clone(), panels_t.clone(), n);
            for (a, b) in to_vec(y.into_data()).iter().zip(&y_ref) {
                assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0));
            }
        }
    }

    fn to_vec(d: TensorData) -> Vec<f32> {
        d.convert::<f32>().try_into_vec::<f32>().expect("f32 data")
    }
}
