//! Picks the burn device: CUDA when built with the `cuda` feature and a GPU answers (or
//! `AUTOMALDESC_DEVICE=cuda`), the flex CPU backend otherwise.

use burn::tensor::Device;

pub fn select() -> anyhow::Result<Device> {
    let wanted = std::env::var("AUTOMALDESC_DEVICE").unwrap_or_default();
    #[cfg(feature = "cuda")]
    if wanted != "cpu" {
        return Ok(Device::cuda(0));
    }
    anyhow::ensure!(
        wanted.is_empty() || wanted == "cpu",
        "AUTOMALDESC_DEVICE={wanted} is not available in this build (cpu{})",
        if cfg!(feature = "cuda") { ", cuda" } else { "" }
    );
    Ok(Device::flex())
}
