//! The burn device a worker computes on: CUDA when built with the `cuda` feature (unless
//! `AUTOMALDESC_DEVICE=cpu`), the flex CPU backend otherwise.

use burn::tensor::Device;

/// The device named by `AUTOMALDESC_DEVICE` (empty: the build's best).
pub fn select() -> Result<Device, String> {
    let wanted = std::env::var("AUTOMALDESC_DEVICE").unwrap_or_default();
    #[cfg(feature = "cuda")]
    if wanted != "cpu" {
        return Ok(Device::cuda(0));
    }
    if !(wanted.is_empty() || wanted == "cpu") {
        return Err(format!(
            "AUTOMALDESC_DEVICE={wanted} is not available in this build (cpu{})",
            if cfg!(feature = "cuda") { ", cuda" } else { "" }
        ));
    }
    Ok(Device::flex())
}

/// What [`select`] picks, as workers register it: "cuda" or "cpu".
pub fn backend_name() -> &'static str {
    let cpu = std::env::var("AUTOMALDESC_DEVICE").is_ok_and(|v| v == "cpu");
    if cfg!(feature = "cuda") && !cpu {
        "cuda"
    } else {
        "cpu"
    }
}
