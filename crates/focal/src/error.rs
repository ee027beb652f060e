//! The engine's error type.

use crate::tensor::DType;

/// Errors returned by the engine, grouped by concern.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // Device and adapter.
    #[error("no GPU adapter found: {0}. Install a Vulkan driver (Mesa lavapipe on machines without a GPU) or use a WebGPU browser")]
    NoAdapter(String),
    #[error("requesting a device from adapter {adapter:?} failed: {message}")]
    RequestDevice { adapter: String, message: String },
    #[error("dtype {dtype} is not supported by this adapter: it lacks the SHADER_F16 feature")]
    UnsupportedDType { dtype: DType },
    #[error("{what} of {size} bytes exceeds the device limit {name} = {limit} bytes")]
    BufferTooLarge {
        what: String,
        size: u64,
        name: &'static str,
        limit: u64,
    },
    #[error(
        "workgroup memory of {bytes} bytes for {kernel} exceeds the device limit of {limit} bytes"
    )]
    WorkgroupMemory {
        kernel: &'static str,
        bytes: u32,
        limit: u32,
    },
    #[error(
        "{kernel} needs {count} workgroups along one axis, more than the device limit of {limit}"
    )]
    DispatchTooLarge {
        kernel: &'static str,
        count: u64,
        limit: u32,
    },

    // Shapes and arguments.
    #[error("shape mismatch in {op}: {detail}")]
    ShapeMismatch { op: &'static str, detail: String },
    #[error("dtype mismatch in {op}: expected {expected}, found {found}")]
    DTypeMismatch {
        op: &'static str,
        expected: DType,
        found: DType,
    },
    #[error("data of {len} elements does not fill shape {shape:?} ({expected} elements)")]
    DataLength {
        len: usize,
        shape: Vec<usize>,
        expected: usize,
    },
    #[error("invalid argument {name} = {value}: {reason}")]
    InvalidArgument {
        name: &'static str,
        value: String,
        reason: String,
    },

    // Attention.
    #[error("head_dim {head_dim} is not supported: the attention kernels take {supported:?}")]
    UnsupportedHeadDim {
        head_dim: usize,
        supported: &'static [usize],
    },
    #[error("q_heads {q_heads} is not a multiple of kv_heads {kv_heads}: every KV head must serve the same number of query heads")]
    HeadGrouping { q_heads: usize, kv_heads: usize },
    #[error("{mask} mask does not fit the attention shape: {detail}")]
    MaskMismatch { mask: &'static str, detail: String },

    // Shaders.
    #[error("shader {file}:{line}:{column}: {message}")]
    Shader {
        file: String,
        line: u32,
        column: u32,
        message: String,
    },
    #[error("shader preprocessor error in {file} at line {line}: {message}")]
    Preprocess {
        file: String,
        line: usize,
        message: String,
    },

    // Readback and device loss.
    #[error("reading buffer back from the GPU failed: {0}")]
    Readback(String),
    #[error("GPU device error: {0}")]
    Device(String),

    // KV cache.
    #[error("KV cache pool exhausted: sequence {sequence} needs {needed} more blocks, {free} of {total} are free")]
    PoolExhausted {
        sequence: u64,
        needed: usize,
        free: usize,
        total: usize,
    },
    #[error("unknown sequence id {0}: it was never created or has been freed")]
    UnknownSequence(u64),

    // Model files and generation.
    #[error("invalid {format} file: {field}: {detail}")]
    Format {
        format: &'static str,
        field: String,
        detail: String,
    },
    #[error("unsupported tensor type {kind} for tensor {tensor}")]
    UnsupportedTensorType { tensor: String, kind: String },
    #[error("model is missing tensor {0}")]
    MissingTensor(String),
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    #[error("prompt of {tokens} tokens exceeds the context length {limit}")]
    ContextOverflow { tokens: usize, limit: usize },
    #[error("generation error: {0}")]
    Generation(String),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Returns early with an [`Error::InvalidArgument`] built from its parts.
#[macro_export]
macro_rules! bail_arg {
    ($name:expr, $value:expr, $($reason:tt)+) => {
        return Err($crate::Error::InvalidArgument {
            name: $name,
            value: format!("{}", $value),
            reason: format!($($reason)+),
        })
    };
}
