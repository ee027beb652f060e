//! GPU tensors: a storage buffer with a shape, row-major strides and a dtype.

use std::fmt;
use std::sync::Arc;

use half::f16;

use crate::{Context, Error, Result};

/// Element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
}

impl DType {
    /// Size of one element in bytes.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 => 2,
        }
    }

    /// WGSL scalar type name.
    pub fn wgsl(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
        }
    }

    /// Returns `x` rounded to this dtype and back, as uploading a tensor rounds it.
    pub fn round(self, x: f32) -> f32 {
        match self {
            DType::F32 => x,
            DType::F16 => f16::from_f32(x).to_f32(),
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.wgsl())
    }
}

/// A tensor stored in a GPU buffer, row-major and contiguous.
///
/// Cloning shares the buffer. Buffers are padded to a multiple of 4 bytes, as wgpu
/// requires for copies, so an odd-length f16 tensor has two trailing bytes of padding.
#[derive(Clone)]
pub struct Tensor {
    buffer: Arc<wgpu::Buffer>,
    shape: Vec<usize>,
    strides: Vec<usize>,
    dtype: DType,
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor({:?}, {})", self.shape, self.dtype)
    }
}

/// Returns the row-major strides, in elements, of `shape`.
pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    strides
}

fn element_count(shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| Error::InvalidArgument {
            name: "shape",
            value: format!("{shape:?}"),
            reason: "element count overflows usize".into(),
        })
}

fn padded_bytes(elements: usize, dtype: DType) -> u64 {
    let bytes = (elements * dtype.size()) as u64;
    bytes.div_ceil(4).max(1) * 4
}

const STORAGE_USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

impl Tensor {
    fn check_dtype(ctx: &Context, dtype: DType) -> Result<()> {
        if dtype == DType::F16 && !ctx.capabilities().shader_f16 {
            return Err(Error::UnsupportedDType { dtype });
        }
        Ok(())
    }

    /// Allocates a zero-filled tensor.
    ///
    /// Errors when the buffer exceeds the device limits or `dtype` is f16 on an adapter
    /// without shader-f16.
    pub fn zeros(ctx: &Context, shape: &[usize], dtype: DType) -> Result<Self> {
        Self::check_dtype(ctx, dtype)?;
        let elements = element_count(shape)?;
        let size = padded_bytes(elements, dtype);
        ctx.check_binding_size(&format!("tensor {shape:?} {dtype}"), size)?;
        let buffer = ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("focal tensor"),
            size,
            usage: STORAGE_USAGE,
            mapped_at_creation: false,
        });
        Ok(Self::from_buffer(Arc::new(buffer), shape, dtype))
    }

    /// Uploads f32 data, converting to `dtype`.
    pub fn from_f32(ctx: &Context, data: &[f32], shape: &[usize], dtype: DType) -> Result<Self> {
        let expected = element_count(shape)?;
        if data.len() != expected {
            return Err(Error::DataLength {
                len: data.len(),
                shape: shape.to_vec(),
                expected,
            });
        }
        match dtype {
            DType::F32 => Self::upload_bytes(ctx, bytemuck::cast_slice(data), shape, dtype),
            DType::F16 => {
                let halves: Vec<f16> = data.iter().map(|&x| f16::from_f32(x)).collect();
                Self::upload_bytes(ctx, bytemuck::cast_slice(&halves), shape, dtype)
            }
        }
    }

    /// Uploads f16 data without conversion.
    pub fn from_f16(ctx: &Context, data: &[f16], shape: &[usize]) -> Result<Self> {
        let expected = element_count(shape)?;
        if data.len() != expected {
            return Err(Error::DataLength {
                len: data.len(),
                shape: shape.to_vec(),
                expected,
            });
        }
        Self::upload_bytes(ctx, bytemuck::cast_slice(data), shape, DType::F16)
    }

    /// Uploads raw bytes, already in `dtype`'s encoding, as a tensor of `shape`.
    pub(crate) fn upload_bytes(
        ctx: &Context,
        bytes: &[u8],
        shape: &[usize],
        dtype: DType,
    ) -> Result<Self> {
        Self::check_dtype(ctx, dtype)?;
        let size = padded_bytes(bytes.len() / dtype.size(), dtype);
        ctx.check_binding_size(&format!("tensor {shape:?} {dtype}"), size)?;
        let buffer = ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("focal tensor"),
            size,
            usage: STORAGE_USAGE,
            mapped_at_creation: true,
        });
        {
            let mut view = buffer
                .slice(..)
                .get_mapped_range_mut()
                .map_err(|e| Error::Device(format!("mapping a new buffer failed: {e}")))?;
            view.slice(..bytes.len()).copy_from_slice(bytes);
        }
        buffer.unmap();
        Ok(Self::from_buffer(Arc::new(buffer), shape, dtype))
    }

    /// Wraps an existing buffer. The buffer must hold at least the shape's bytes.
    pub fn from_buffer(buffer: Arc<wgpu::Buffer>, shape: &[usize], dtype: DType) -> Self {
        Self {
            buffer,
            strides: contiguous_strides(shape),
            shape: shape.to_vec(),
            dtype,
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Row-major strides in elements.
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Size of the data in bytes, without padding.
    pub fn size_bytes(&self) -> u64 {
        (self.len() * self.dtype.size()) as u64
    }

    /// Returns a view of the same buffer with another shape of the same element count.
    pub fn reshape(&self, shape: &[usize]) -> Result<Self> {
        let elements = element_count(shape)?;
        if elements != self.len() {
            return Err(Error::ShapeMismatch {
                op: "reshape",
                detail: format!(
                    "{:?} has {} elements, {shape:?} has {elements}",
                    self.shape,
                    self.len()
                ),
            });
        }
        Ok(Self::from_buffer(self.buffer.clone(), shape, self.dtype))
    }

    /// Copies the tensor back to the CPU as f32, converting from f16 when needed.
    pub async fn to_vec(&self, ctx: &Context) -> Result<Vec<f32>> {
        let bytes = read_buffer(ctx, &self.buffer, 0, self.size_bytes()).await?;
        Ok(match self.dtype {
            DType::F32 => bytemuck::pod_collect_to_vec::<u8, f32>(&bytes),
            DType::F16 => bytemuck::pod_collect_to_vec::<u8, f16>(&bytes)
                .into_iter()
                .map(f16::to_f32)
                .collect(),
        })
    }

    /// Blocking form of [`Tensor::to_vec`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn to_vec_blocking(&self, ctx: &Context) -> Result<Vec<f32>> {
        pollster::block_on(self.to_vec(ctx))
    }

    /// Writes f32 data into the tensor, converting to its dtype.
    pub fn write_f32(&self, ctx: &Context, data: &[f32]) -> Result<()> {
        if data.len() != self.len() {
            return Err(Error::DataLength {
                len: data.len(),
                shape: self.shape.clone(),
                expected: self.len(),
            });
        }
        match self.dtype {
            DType::F32 => write_padded(ctx, &self.buffer, 0, bytemuck::cast_slice(data)),
            DType::F16 => {
                let halves: Vec<f16> = data.iter().map(|&x| f16::from_f32(x)).collect();
                write_padded(ctx, &self.buffer, 0, bytemuck::cast_slice(&halves))
            }
        }
        Ok(())
    }
}

/// Writes `bytes` at `offset`, padding the write to the 4-byte multiple wgpu requires.
pub(crate) fn write_padded(ctx: &Context, buffer: &wgpu::Buffer, offset: u64, bytes: &[u8]) {
    if bytes.len().is_multiple_of(4) {
        ctx.queue().write_buffer(buffer, offset, bytes);
    } else {
        let mut padded = bytes.to_vec();
        padded.resize(bytes.len().div_ceil(4) * 4, 0);
        ctx.queue().write_buffer(buffer, offset, &padded);
    }
}

/// Copies `size` bytes at `offset` of `buffer` to the CPU through a staging buffer.
pub async fn read_buffer(
    ctx: &Context,
    buffer: &wgpu::Buffer,
    offset: u64,
    size: u64,
) -> Result<Vec<u8>> {
    let encoder = ctx.device().create_command_encoder(&Default::default());
    submit_and_read(ctx, encoder, buffer, offset, size).await
}

/// Appends a copy of `size` bytes at `offset` of `buffer` to `encoder`, submits it and
/// returns the bytes once the GPU is done, or the first error the device reported while
/// the work was recorded or run.
pub(crate) async fn submit_and_read(
    ctx: &Context,
    mut encoder: wgpu::CommandEncoder,
    buffer: &wgpu::Buffer,
    offset: u64,
    size: u64,
) -> Result<Vec<u8>> {
    let padded = size.div_ceil(4).max(1) * 4;
    let staging = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("focal readback"),
        size: padded,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    encoder.copy_buffer_to_buffer(buffer, offset, &staging, 0, padded);
    ctx.submit(encoder);

    let (sender, receiver) = futures_channel::oneshot::channel();
    staging
        .slice(..)
        .map_async(wgpu::MapMode::Read, move |result| {
            let _ = sender.send(result);
        });
    ctx.wait_idle()?;
    receiver
        .await
        .map_err(|_| Error::Readback("the map callback was dropped".into()))?
        .map_err(|e| Error::Readback(e.to_string()))?;
    ctx.take_device_error()?;
    let bytes = {
        let view = staging
            .get_mapped_range(..)
            .map_err(|e| Error::Readback(e.to_string()))?;
        view[..size as usize].to_vec()
    };
    staging.unmap();
    Ok(bytes)
}
