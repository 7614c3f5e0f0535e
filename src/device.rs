//! Picks the burn device: CUDA when built with the `cuda` feature (unless
//! `AUTOMALDESC_DEVICE=cpu`), the flex CPU backend otherwise (see `worker::device`).

use burn::tensor::Device;

pub fn select() -> anyhow::Result<Device> {
    Ok(automaldesc_runtime::device::select()?)
}
