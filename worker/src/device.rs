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

/// The memory of the device [`select`] picks, as workers register it: the machine's
/// physical memory for the CPU backend; 0 (unknown) for CUDA, which is not queried.
pub fn memory_bytes() -> u64 {
    if backend_name() != "cpu" {
        return 0;
    }
    // SAFETY: sysconf only reads system configuration.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if pages > 0 && page > 0 {
        pages as u64 * page as u64
    } else {
        0
    }
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
