//! The burn device a worker computes on: CUDA when built with the `cuda` feature (unless
//! `AUTOMALDESC_DEVICE=cpu`), the flex CPU backend otherwise.

use burn::tensor::Device;

/// A device this build cannot compute on.
#[derive(Debug, thiserror::Error)]
#[error("AUTOMALDESC_DEVICE={wanted} is not available in this build ({available})")]
pub struct UnavailableDevice {
    pub wanted: String,
    pub available: &'static str,
}

/// A worker asked for a device it was not built for: every task fails alike.
impl From<UnavailableDevice> for automaldesc_common::fault::TaskError {
    fn from(e: UnavailableDevice) -> Self {
        Self::internal(e.to_string())
    }
}

/// The device named by `AUTOMALDESC_DEVICE` (empty: the build's best).
pub fn select() -> Result<Device, UnavailableDevice> {
    let wanted = std::env::var("AUTOMALDESC_DEVICE").unwrap_or_default();
    #[cfg(feature = "cuda")]
    if wanted != "cpu" {
        return Ok(Device::cuda(0));
    }
    if !(wanted.is_empty() || wanted == "cpu") {
        return Err(UnavailableDevice {
            wanted,
            available: if cfg!(feature = "cuda") {
                "cpu, cuda"
            } else {
                "cpu"
            },
        });
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
