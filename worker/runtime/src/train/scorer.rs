//! The model the forward-only passes of training run on (the end of every epoch: the
//! heads' features and the validation scores). With an inference copy of the base model at
//! hand, the epoch's adapter is merged into the blocks it touches and the passes run on the
//! fused kernels, from the frozen-prefix states where there are some; otherwise they run on
//! the training model itself, the adapter as separate branches. Both give the same scores
//! up to float rounding (`train::tests_objective`).

use super::forward::{self, Batch, Scored};
use super::label_eval::merged;
use super::lora::{LoraTensors, LoraWeights};
use super::TrainError;
use crate::model::Llama;

pub enum Scorer<'a> {
    /// The training model (autodiff device, no graph recorded), adapter as branches.
    Branches(&'a Llama),
    /// An inference model with the adapter's blocks merged in.
    Merged(Box<Llama>),
}

impl<'a> Scorer<'a> {
    /// Merges `adapter` into `fused` when there is one; the heads are not merged (they stay
    /// in the tensors [`Scorer::tensors`] gives).
    pub fn new(
        model: &'a Llama,
        fused: Option<&Llama>,
        adapter: &LoraWeights,
    ) -> Result<Self, TrainError> {
        match fused {
            Some(base) => merged(base, adapter)
                .map(|m| Self::Merged(Box::new(m)))
                .map_err(|e| TrainError::Config(format!("merging the adapter for scoring: {e}"))),
            None => Ok(Self::Branches(model)),
        }
    }

    pub fn model(&self) -> &Llama {
        match self {
            Self::Branches(m) => m,
            Self::Merged(m) => m,
        }
    }

    /// `adapter`'s tensors on this scorer's device, without gradients.
    pub fn tensors(&self, adapter: &LoraWeights) -> LoraTensors {
        adapter.tensors(&self.model().device(), false)
    }

    /// Final hidden states `[b * t, hidden]` of `batch` under the adapter `lora` stands for
    /// (ignored when merged: its blocks are in the weights).
    pub fn hidden_states(
        &self,
        batch: &Batch,
        lora: Option<&LoraTensors>,
    ) -> burn::tensor::Tensor<2> {
        match self {
            Self::Branches(m) => forward::hidden_states(m, batch, lora, None),
            Self::Merged(m) => forward::hidden_states_merged(m, batch),
        }
    }

    /// Scores `batch` as [`forward::score`] does, without dropout.
    pub fn score(&self, batch: &Batch, lora: Option<&LoraTensors>) -> Scored {
        let hidden = self.hidden_states(batch, lora);
        forward::score_hidden(self.model(), hidden, batch, lora)
    }
}
