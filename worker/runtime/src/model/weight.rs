//! A linear layer's weight, kept in the layout its device multiplies fastest: `[in, out]` for
//! `x.matmul(w)` on any backend, or packed in column panels for the CPU kernel
//! (`kernels::linear`). The model packs its weights once, when it is built on the flex device.

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor, TensorData};

use crate::kernels::{self, linear::PANEL};

#[derive(Module, Debug)]
pub enum Weight {
    /// `[in, out]`.
    Plain(Param<Tensor<2>>),
    Packed(Packed),
    /// A frozen weight of the training model on the autodiff device over flex: packed for
    /// the forward and, transposed, for the input gradient (`kernels::frozen`).
    Frozen(Frozen),
}

/// `W` packed (`[panels(out), in, PANEL]`) and `Wᵀ` packed (`[panels(in), out, PANEL]`).
#[derive(Module, Debug)]
pub struct Frozen {
    pub panels: Param<Tensor<3>>,
    pub panels_t: Param<Tensor<3>>,
    #[module(skip)]
    pub out_features: usize,
}

impl Frozen {
    /// From `W` packed and `Wᵀ` packed, for `W` `[in, out]`.
    fn from_packs(
        panels: Vec<f32>,
        panels_t: Vec<f32>,
        inp: usize,
        out: usize,
        device: &Device,
    ) -> Self {
        let param = |data: Vec<f32>, shape: [usize; 3]| {
            Param::from_tensor(Tensor::from_data(TensorData::new(data, shape), device))
        };
        Self {
            panels: param(panels, [kernels::linear::panels(out), inp, PANEL]),
            panels_t: param(panels_t, [kernels::linear::panels(inp), out, PANEL]),
            out_features: out,
        }
    }

    /// The `[in, out]` matrix again.
    fn unpacked(&self) -> Tensor<2> {
        unpack_panels(&self.panels, self.out_features)
    }
}

/// `[panels, in, PANEL]`: panel `p` holds output columns `p*PANEL ..`, the last zero-padded.
#[derive(Module, Debug)]
pub struct Packed {
    pub panels: Param<Tensor<3>>,
    #[module(skip)]
    pub out_features: usize,
}

impl Packed {
    /// The `[in, out]` matrix again.
    fn unpacked(&self) -> Tensor<2> {
        unpack_panels(&self.panels, self.out_features)
    }
}

/// The `[in, out]` matrix of packed `panels` `[panels(out), in, PANEL]`.
fn unpack_panels(panels: &Param<Tensor<3>>, out: usize) -> Tensor<2> {
    let inp = panels.dims()[1];
    let data = kernels::linear::unpack(&to_vec(panels.val()), inp, out);
    Tensor::from_data(TensorData::new(data, [inp, out]), &panels.device())
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("weights convert to f32")
}

impl Weight {
    /// A plain weight from row-major `[in, out]` data.
    pub fn plain(data: Vec<f32>, shape: [usize; 2], device: &Device) -> Self {
        Self::Plain(Param::from_tensor(Tensor::from_data(
            TensorData::new(data, shape),
            device,
        )))
    }

    /// A packed weight for `x · rowsᵀ`, from row-major `[out, in]` data (a tied lm-head:
    /// the embedding matrix).
    pub fn packed_from_rows(rows: &[f32], out: usize, inp: usize, device: &Device) -> Self {
        let data = kernels::linear::pack_transposed(rows, out, inp);
        Self::packed(data, inp, out, device)
    }

    fn packed(data: Vec<f32>, inp: usize, out: usize, device: &Device) -> Self {
        let shape = [kernels::linear::panels(out), inp, PANEL];
        Self::Packed(Packed {
            panels: Param::from_tensor(Tensor::from_data(TensorData::new(data, shape), device)),
            out_features: out,
        })
    }

    /// `[in, out]`.
    pub fn dims(&self) -> [usize; 2] {
        match self {
            Self::Plain(w) => w.dims(),
            Self::Packed(p) => [p.panels.dims()[1], p.out_features],
            Self::Frozen(f) => [f.panels.dims()[1], f.out_features],
        }
    }

    /// `x · W` for `x` `[rows, in]`.
    pub fn apply(&self, x: Tensor<2>) -> Tensor<2> {
        match self {
            Self::Plain(w) => x.matmul(w.val()),
            Self::Packed(p) if kernels::native(&x) => {
                kernels::linear(x, p.panels.val(), p.out_features)
            }
            Self::Packed(p) => x.matmul(p.unpacked()),
            Self::Frozen(f) if kernels::frozen::native(&x) => {
                kernels::frozen::frozen_linear(x, f.panels.val(), f.panels_t.val(), f.out_features)
            }
            Self::Frozen(f) => x.matmul(f.unpacked()),
        }
    }

    /// The same weight for training a frozen base on the autodiff device over flex.
    pub fn to_frozen(&self) -> Self {
        let plain = match self {
            Self::Frozen(f) => return Self::Frozen(f.clone()),
            Self::Plain(w) => w.val(),
            Self::Packed(p) => p.unpacked(),
        };
        let [inp, out] = plain.dims();
        let device = plain.device();
        let w = to_vec(plain);
        Self::Frozen(Frozen::from_packs(
            kernels::linear::pack(&w, inp, out),
            kernels::linear::pack_transposed(&w, inp, out),
            inp,
            out,
            &device,
        ))
    }

    /// A frozen weight for `x · rowsᵀ` from row-major `[out, in]` data (a tied lm-head):
    /// `rows` is `Wᵀ` itself.
    pub fn frozen_from_rows(rows: &[f32], out: usize, inp: usize, device: &Device) -> Self {
        Self::Frozen(Frozen::from_packs(
            kernels::linear::pack_transposed(rows, out, inp),
            kernels::linear::pack(rows, out, inp),
            inp,
            out,
            device,
        ))
    }

    /// The same weight, packed.
    pub fn to_packed(&self) -> Self {
        match self {
            Self::Packed(p) => Self::Packed(p.clone()),
            Self::Frozen(f) => Self::Packed(Packed {
                panels: f.panels.clone(),
                out_features: f.out_features,
            }),
            Self::Plain(w) => {
                let [inp, out] = w.dims();
                let device = w.device();
                let data = kernels::linear::pack(&to_vec(w.val()), inp, out);
                Self::packed(data, inp, out, &device)
            }
        }
    }

    /// The same weight, `[in, out]`.
    pub fn to_plain(&self) -> Self {
        match self {
            Self::Plain(w) => Self::Plain(w.clone()),
            Self::Packed(p) => Self::Plain(Param::from_tensor(p.unpacked())),
            Self::Frozen(f) => Self::Plain(Param::from_tensor(f.unpacked())),
        }
    }
}
