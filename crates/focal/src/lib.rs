//! Focal: a wgpu compute engine for transformer attention.
//!
//! The engine runs the same code natively (Vulkan, Metal, DX12 through wgpu) and in
//! the browser (WebGPU through wasm32). A [`Context`] opens the device; a [`Tensor`]
//! is a GPU buffer with a shape and dtype; kernels in [`kernels`] record compute
//! dispatches from the WGSL files in `shaders/`.

pub mod attention;
pub mod check;
mod context;
mod error;
pub mod kernels;
pub mod kv;
pub mod model;
pub mod shader;
mod tensor;

pub use context::{Capabilities, Context, ContextOptions};
pub use error::{Error, Result};
pub use tensor::{contiguous_strides, read_buffer, DType, Tensor};
