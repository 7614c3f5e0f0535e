//! Stand-in for `cubecl-llvm` 0.11.3 that links no LLVM.
//!
//! `cubecl-cuda` always depends on `cubecl-llvm`, whose build script downloads an LLVM bundle.
//! This crate replaces it (through `[patch.crates-io]`) with just the items `cubecl-cuda` names:
//! the PTX version type, the feature-restriction hook, and the compiler/options/artifact types.
//! The LLVM compiler here never produces code: [`PlironCompiler::compile`] returns an error.
//! `cubecl-cuda` must therefore be built with its `cpp` feature, which makes the CUDA C++
//! (NVRTC) backend the default; the worker's `cuda` feature enables it.

#![allow(clippy::new_without_default)]

use core::fmt;

use cubecl_core::ir::amd::GfxArch;
#[cfg(feature = "nvptx")]
use cubecl_core::ir::nvidia::SmArch;
use cubecl_core::prelude::KernelDefinition;
use cubecl_core::{CompilationError, Compiler};
use cubecl_environment::backtrace::BackTrace;
use cubecl_runtime::kernel::BufferIOAttr;

const NO_LLVM: &str = "cubecl-llvm is replaced by an offline stub in this build (see \
     deploy/CUDA.md); the LLVM backend is unavailable. Build cubecl-cuda with its `cpp` \
     feature so kernels go through NVRTC.";

/// Targets the real crate can lower to. Only the variant names matter here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LlvmTarget {
    #[default]
    Cpu,
    #[cfg(feature = "amdgpu")]
    AmdGpu,
    #[cfg(feature = "nvptx")]
    Nvptx,
}

impl LlvmTarget {
    pub fn is_gpu(self) -> bool {
        !matches!(self, LlvmTarget::Cpu)
    }
}

/// The LLVM compiler. Holds its target like the real one; every compilation fails.
#[derive(Clone, Debug, Default)]
pub struct PlironCompiler {
    pub target: LlvmTarget,
}

/// Options with the fields `cubecl-cuda` sets (the rest are left to `Default`).
#[derive(Clone, Debug, Default)]
pub struct PlironOptions {
    pub cpu_buffer_alignment: Option<u32>,
    pub arch: Option<GfxArch>,
    #[cfg(feature = "nvptx")]
    pub sm_arch: Option<SmArch>,
    #[cfg(feature = "nvptx")]
    pub ptx_version: Option<nvptx::ptx_version::PtxVersion>,
    pub grid_constants: bool,
}

/// A compiled PTX module, as `cubecl-cuda` reads it. Never constructed by this stub.
#[cfg(feature = "nvptx")]
#[derive(Clone, Debug)]
pub struct NvptxModule {
    pub ptx: Vec<core::ffi::c_char>,
    pub entrypoint: String,
    pub ir: String,
    pub shared_memory_size: usize,
    pub io: Vec<BufferIOAttr>,
}

/// What a compilation would produce. Never constructed by this stub.
#[derive(Clone, Debug)]
pub enum PlironArtifact {
    #[cfg(feature = "nvptx")]
    NvptxCode(NvptxModule),
    /// Keeps the enum inhabited-in-type when `nvptx` is off; never built.
    Unavailable,
}

impl fmt::Display for PlironArtifact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            #[cfg(feature = "nvptx")]
            PlironArtifact::NvptxCode(module) => f.write_str(&module.ir),
            PlironArtifact::Unavailable => f.write_str("<no LLVM backend>"),
        }
    }
}

impl Compiler for PlironCompiler {
    type Representation = PlironArtifact;
    type CompilationOptions = PlironOptions;

    fn compile(
        &mut self,
        _kernel: KernelDefinition,
        _options: &Self::CompilationOptions,
    ) -> Result<Self::Representation, CompilationError> {
        Err(CompilationError::Generic {
            reason: NO_LLVM.to_string(),
            backtrace: BackTrace::capture(),
        })
    }

    fn buffer_io(repr: &Self::Representation) -> Option<Vec<BufferIOAttr>> {
        match repr {
            #[cfg(feature = "nvptx")]
            PlironArtifact::NvptxCode(module) => Some(module.io.clone()),
            PlironArtifact::Unavailable => None,
        }
    }

    fn extension(&self) -> &'static str {
        "ll"
    }

    fn lang_tag(&self) -> &'static str {
        "llvm-stub"
    }
}

pub mod shared {
    pub mod lowered_features {
        use cubecl_core::ir::DeviceProperties;

        /// GPU targets of the LLVM backend.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum GpuTarget {
            #[cfg(feature = "nvptx")]
            Nvptx,
            #[cfg(feature = "amdgpu")]
            AmdGpu,
        }

        /// The real crate narrows the advertised features to what its LLVM lowering supports.
        /// `cubecl-cuda` only calls this when the LLVM backend is selected, which it is not
        /// with the `cpp` feature; with no backend to narrow for, the properties are kept.
        pub fn restrict_features(_props: &mut DeviceProperties, _target: GpuTarget) {}
    }
}

#[cfg(feature = "nvptx")]
pub mod nvptx {
    pub mod ptx_version {
        use core::fmt;

        /// A PTX ISA version (8.7 is stored as `87`).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub struct PtxVersion(u32);

        impl PtxVersion {
            /// The real crate picks the newest PTX version a driver loads, for its own PTX
            /// emitter. This stub emits no PTX (NVRTC picks its own version), so it leaves the
            /// choice open. `cubecl-cuda` only uses the answer as an LLVM compile option and
            /// in the LLVM backend's cache key.
            pub fn for_driver(_driver: i32) -> Option<Self> {
                None
            }
        }

        impl fmt::Display for PtxVersion {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "ptx{}", self.0)
            }
        }
    }
}
