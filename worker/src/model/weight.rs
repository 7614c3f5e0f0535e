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
        let inp = self.panels.dims()[1];
        let data = kernels::linear::unpack(&to_vec(self.panels.val()), inp, self.out_features);
        Tensor::from_data(
            TensorData::new(data, [inp, self.out_features]),
            &self.panels.device(),
        )
    }
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
        }
    }

    /// The same weight, packed.
    pub fn to_packed(&self) -> Self {
        match self {
            Self::Packed(p) => Self::Packed(p.clone()),
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
        }
    }
}
