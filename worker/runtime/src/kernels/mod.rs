//! Fused operations of the decoder as a burn backend extension. On the flex CPU backend they
//! run the kernels of `cpu`; every other device (burn-cuda) and dtype takes the reference
//! path in `model`, written with ordinary tensor ops. Tests hold the two paths to the same
//! numbers (`model::tests`).

pub mod attention;
pub mod causal;
pub mod cpu;
pub mod frozen;
pub mod linear;
pub mod pointwise;

use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Backend, Dispatch, DispatchDevice, Flex};
use burn::tensor::{DType, Shape, Tensor};

pub use attention::AttentionStep;

#[backend_extension(Flex)]
pub trait FusedOps: Backend {
    /// RMSNorm of every row of `x` `[rows, hidden]` with `weight` `[hidden]`.
    fn fused_rms_norm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        eps: f32,
    ) -> FloatTensor<Self>;

    /// `x · W` for `x` `[rows, in]` and `W` packed in column panels `[panels, in, PANEL]`
    /// (see `linear`); returns `[rows, out_features]`.
    fn fused_linear(
        x: FloatTensor<Self>,
        panels: FloatTensor<Self>,
        out_features: usize,
    ) -> FloatTensor<Self>;

    /// `silu(gate) * up` of `[rows, 2 * ffn]` (gate columns first) → `[rows, ffn]`.
    fn fused_swiglu(gate_up: FloatTensor<Self>) -> FloatTensor<Self>;

    /// Rotary embedding, KV-cache write and attention of one step (see
    /// `attention::attention`). Returns the attention output and the updated caches.
    fn fused_attention(
        qkv: FloatTensor<Self>,
        k_cache: FloatTensor<Self>,
        v_cache: FloatTensor<Self>,
        step: AttentionStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// A contiguous f32 view of `t` (a copy only when `t` is a strided view).
pub(super) fn contiguous(t: FlexTensor) -> FlexTensor {
    if t.is_contiguous() {
        t
    } else {
        t.to_contiguous()
    }
}

pub(super) fn slice(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>()
        .expect("fused ops take contiguous f32 tensors")
}

/// Mutable storage of a cache tensor, in place when the cache owns it alone.
fn cache_storage(t: &mut FlexTensor) -> &mut [f32] {
    assert!(
        t.is_contiguous() && t.layout().start_offset() == 0,
        "kv cache must be a whole contiguous tensor"
    );
    if !t.is_unique() {
        tracing::debug!("kv cache shared: copied before the in-place write");
    }
    t.storage_mut::<f32>()
}

pub(super) fn new_tensor(data: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::from_data(burn::tensor::TensorData::new(data, Shape::from(shape)))
}

impl FusedOps for Flex {
    fn fused_rms_norm(x: FlexTensor, weight: FlexTensor, eps: f32) -> FlexTensor {
        let (x, weight) = (contiguous(x), contiguous(weight));
        let shape = x.layout().shape().clone();
        let mut out = FlexTensor::empty(shape, DType::F32);
        cpu::rms_norm(slice(&x), slice(&weight), eps, out.storage_mut::<f32>());
        out
    }

    fn fused_linear(x: FlexTensor, panels: FlexTensor, out_features: usize) -> FlexTensor {
        let (x, panels) = (contiguous(x), contiguous(panels));
        let dims = x.layout().shape().clone();
        let (rows, inp) = (dims[0], dims[1]);
        let mut out = FlexTensor::empty(Shape::from(vec![rows, out_features]), DType::F32);
        linear::linear(
            slice(&x),
            rows,
            inp,
            slice(&panels),
            out_features,
            out.storage_mut::<f32>(),
        );
        out
    }

    fn fused_swiglu(gate_up: FlexTensor) -> FlexTensor {
        let gate_up = contiguous(gate_up);
        let dims = gate_up.layout().shape().clone();
        let (rows, ffn) = (dims[0], dims[1] / 2);
        let mut out = FlexTensor::empty(Shape::from(vec![rows, ffn]), DType::F32);
        cpu::swiglu(slice(&gate_up), ffn, out.storage_mut::<f32>());
        out
    }

    fn fused_attention(
        qkv: FlexTensor,
        mut k_cache: FlexTensor,
        mut v_cache: FlexTensor,
        step: AttentionStep,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let qkv = contiguous(qkv);
        let out = attention::attention(
            slice(&qkv),
            cache_storage(&mut k_cache),
            cache_storage(&mut v_cache),
            &step,
        );
        let shape = vec![step.slots.len() * step.t, step.heads * step.head_dim];
        (new_tensor(out, shape), k_cache, v_cache)
    }
}

/// Whether `t` can take the fused CPU path: a flex f32 tensor.
pub fn native(t: &Tensor<2>) -> bool {
    native_device(&t.device()) && t.dtype() == DType::F32
}

/// Whether tensors on `device` run the fused CPU kernels (the flex backend).
pub fn native_device(device: &burn::tensor::Device) -> bool {
    matches!(device.as_dispatch(), DispatchDevice::Flex(_))
}

/// `x · W` with `W` packed by `linear::pack` (`[panels, in, PANEL]`).
pub fn linear(x: Tensor<2>, panels: Tensor<3>, out_features: usize) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::fused_linear(
        x.into_dispatch(),
        panels.into_dispatch(),
        out_features,
    ))
}

pub fn rms_norm(x: Tensor<2>, weight: &Tensor<1>, eps: f64) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::fused_rms_norm(
        x.into_dispatch(),
        weight.clone().into_dispatch(),
        eps as f32,
    ))
}

pub fn swiglu(gate_up: Tensor<2>) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::fused_swiglu(
        gate_up.into_dispatch(),
    ))
}

/// Returns the attention output `[slots * t, heads * head_dim]` and the updated caches.
pub fn attention(
    qkv: Tensor<2>,
    k_cache: Tensor<2>,
    v_cache: Tensor<2>,
    step: AttentionStep,
) -> (Tensor<2>, Tensor<2>, Tensor<2>) {
    let (out, k, v) = <Dispatch as FusedOps>::fused_attention(
        qkv.into_dispatch(),
        k_cache.into_dispatch(),
        v_cache.into_dispatch(),
        step,
    );
    (
        Tensor::from_dispatch(out),
        Tensor::from_dispatch(k),
        Tensor::from_dispatch(v),
    )
}
