//! GGUF reader: header, metadata, tensor infos and dequantisation of F32, F16, Q8_0,
//! Q4_0 and Q4_1 tensors.
//!
//! The reader borrows the whole file as a byte slice, so the same code runs on a
//! memory-mapped file natively and on a downloaded buffer in the browser. Every count,
//! length and offset is checked against the bytes that remain before anything is
//! allocated, so a corrupt file yields [`Error::Format`] naming the field, never a panic
//! or an allocation larger than the file.
//!
//! Format reference: the GGUF specification in the ggml repository (`docs/gguf.md`),
//! versions 2 and 3 (64-bit counts; version 1 used 32-bit counts and is rejected).

use std::collections::HashMap;

use half::f16;

use crate::{Error, Result};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most four dimensions.
const MAX_DIMS: u32 = 4;
/// Arrays of arrays deeper than this are rejected instead of recursing further.
const MAX_ARRAY_DEPTH: usize = 4;

fn format_error(field: impl Into<String>, detail: impl Into<String>) -> Error {
    Error::Format {
        format: "GGUF",
        field: field.into(),
        detail: detail.into(),
    }
}

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    /// Returns the value as an unsigned integer when it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Returns the value as a float when it is any number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(items) => Some(items),
            _ => None,
        }
    }
}

/// A ggml tensor type, with the block layout of the quantised ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q8_0,
    /// Any other ggml type id: listed, but not loadable.
    Other(u32),
}

impl TensorType {
    fn from_id(id: u32) -> Self {
        match id {
            0 => TensorType::F32,
            1 => TensorType::F16,
            2 => TensorType::Q4_0,
            3 => TensorType::Q4_1,
            8 => TensorType::Q8_0,
            other => TensorType::Other(other),
        }
    }

    /// Returns (elements per block, bytes per block), or `None` for unsupported types.
    pub fn block_layout(self) -> Option<(u64, u64)> {
        match self {
            TensorType::F32 => Some((1, 4)),
            TensorType::F16 => Some((1, 2)),
            // f16 scale + 16 bytes of nibbles.
            TensorType::Q4_0 => Some((32, 18)),
            // f16 scale + f16 minimum + 16 bytes of nibbles.
            TensorType::Q4_1 => Some((32, 20)),
            // f16 scale + 32 signed bytes.
            TensorType::Q8_0 => Some((32, 34)),
            TensorType::Other(_) => None,
        }
    }

    pub fn name(self) -> String {
        match self {
            TensorType::F32 => "F32".into(),
            TensorType::F16 => "F16".into(),
            TensorType::Q4_0 => "Q4_0".into(),
            TensorType::Q4_1 => "Q4_1".into(),
            TensorType::Q8_0 => "Q8_0".into(),
            TensorType::Other(id) => format!("ggml type {id}"),
        }
    }
}

/// Name, shape, type and data location of one tensor.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions in ggml order: `dims[0]` is the contiguous (innermost) axis.
    pub dims: Vec<u64>,
    pub kind: TensorType,
    /// Offset of the data from the start of the data section, in bytes.
    pub offset: u64,
    /// Size of the data in bytes; 0 for unsupported types, whose size is unknown.
    pub size: u64,
}

impl TensorInfo {
    /// Number of elements.
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Shape in row-major order (outermost first), as the rest of Focal uses.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A parsed GGUF file that borrows its bytes.
pub struct Gguf<'a> {
    pub version: u32,
    pub metadata: HashMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Offset of the data section from the start of the file.
    pub data_offset: u64,
    bytes: &'a [u8],
}

impl std::fmt::Debug for Gguf<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gguf")
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// A bounds-checked little-endian reader over the file.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, count: u64, field: &str) -> Result<&'a [u8]> {
        if count > self.remaining() as u64 {
            return Err(format_error(
                field,
                format!(
                    "needs {count} bytes at offset {}, but the file ends after {} more",
                    self.pos,
                    self.remaining()
                ),
            ));
        }
        let slice = &self.bytes[self.pos..self.pos + count as usize];
        self.pos += count as usize;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64, field)?);
        Ok(out)
    }

    fn u32(&mut self, field: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    fn string(&mut self, field: &str) -> Result<String> {
        let len = self.u64(field)?;
        let bytes = self.take(len, field)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|e| format_error(field, format!("string is not valid UTF-8: {e}")))
    }

    /// Reads a count and checks that `count * min_item_bytes` bytes can still follow.
    fn count(&mut self, field: &str, min_item_bytes: u64) -> Result<u64> {
        let count = self.u64(field)?;
        let needed = count.checked_mul(min_item_bytes);
        if needed.is_none_or(|n| n > self.remaining() as u64) {
            return Err(format_error(
                field,
                format!(
                    "count {count} needs at least {min_item_bytes} bytes each, \
                     but only {} bytes remain",
                    self.remaining()
                ),
            ));
        }
        Ok(count)
    }

    fn value(&mut self, type_id: u32, field: &str, depth: usize) -> Result<Value> {
        Ok(match type_id {
            0 => Value::U8(self.array::<1>(field)?[0]),
            1 => Value::I8(self.array::<1>(field)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(field)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(field)?)),
            4 => Value::U32(self.u32(field)?),
            5 => Value::I32(i32::from_le_bytes(self.array(field)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(field)?)),
            7 => match self.array::<1>(field)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                other => return Err(format_error(field, format!("invalid bool byte {other}"))),
            },
            8 => Value::String(self.string(field)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(format_error(
                        field,
                        format!("arrays nested deeper than {MAX_ARRAY_DEPTH} levels"),
                    ));
                }
                let item_type = self.u32(field)?;
                let min_bytes = value_min_bytes(item_type)
                    .ok_or_else(|| format_error(field, format!("unknown item type {item_type}")))?;
                let count = self.count(field, min_bytes)?;
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(item_type, field, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(field)?),
            11 => Value::I64(i64::from_le_bytes(self.array(field)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(field)?)),
            other => return Err(format_error(field, format!("unknown value type {other}"))),
        })
    }
}

/// Smallest encoded size of a value of `type_id`, for bounding counts before allocating.
fn value_min_bytes(type_id: u32) -> Option<u64> {
    match type_id {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        // A string or an array is at least its 8-byte length (an array also has a type).
        8 | 10..=12 => Some(8),
        9 => Some(12),
        _ => None,
    }
}

impl<'a> Gguf<'a> {
    /// Parses the header, metadata and tensor infos of a GGUF file held in `bytes`.
    ///
    /// Errors with [`Error::Format`] naming the field on a bad magic, an unsupported
    /// version, a count or string that the file cannot hold, an invalid tensor shape,
    /// or tensor data that lies outside the file.
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        let mut cursor = Cursor { bytes, pos: 0 };
        let magic = cursor.array::<4>("magic")?;
        if &magic != MAGIC {
            return Err(format_error(
                "magic",
                format!("expected \"GGUF\", found {magic:02x?}"),
            ));
        }
        let version = cursor.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(format_error(
                "version",
                format!("version {version} is not supported (expected 2 or 3)"),
            ));
        }
        // A tensor info is at least a name length, a dimension count, a type and an offset.
        let tensor_count = cursor.count("tensor_count", 8 + 4 + 4 + 8)?;
        // A key-value pair is at least a key length, a type and the smallest value.
        let kv_count = cursor.count("metadata_kv_count", 8 + 4 + 1)?;

        let mut metadata = HashMap::new();
        for index in 0..kv_count {
            let key = cursor.string(&format!("metadata key {index}"))?;
            let type_id = cursor.u32(&key)?;
            let value = cursor.value(type_id, &key, 0)?;
            metadata.insert(key, value);
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(value) => match value.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
                _ => {
                    return Err(format_error(
                        "general.alignment",
                        format!("{value:?} is not a power of two up to 1 MiB"),
                    ))
                }
            },
        };

        let mut tensors = Vec::with_capacity(tensor_count as usize);
        for index in 0..tensor_count {
            tensors.push(read_tensor_info(&mut cursor, index)?);
        }

        let data_offset = (cursor.pos as u64).div_ceil(alignment) * alignment;
        let data_len = (bytes.len() as u64).saturating_sub(data_offset);
        for tensor in &tensors {
            if tensor.offset % alignment != 0 {
                return Err(format_error(
                    format!("tensor {} offset", tensor.name),
                    format!(
                        "{} is not a multiple of the alignment {alignment}",
                        tensor.offset
                    ),
                ));
            }
            let end = tensor.offset.checked_add(tensor.size);
            if end.is_none_or(|end| end > data_len) {
                return Err(format_error(
                    format!("tensor {} offset", tensor.name),
                    format!(
                        "data at {} + {} bytes lies past the end of the data section ({data_len} bytes)",
                        tensor.offset, tensor.size
                    ),
                ));
            }
        }

        Ok(Self {
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
            bytes,
        })
    }

    /// Returns the metadata value under `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// Returns a required unsigned integer, or a format error naming the key.
    pub fn require_u64(&self, key: &str) -> Result<u64> {
        match self.metadata.get(key) {
            None => Err(format_error(key, "missing metadata key")),
            Some(value) => value
                .as_u64()
                .ok_or_else(|| format_error(key, format!("expected an integer, found {value:?}"))),
        }
    }

    /// Returns a required string, or a format error naming the key.
    pub fn require_str(&self, key: &str) -> Result<&str> {
        match self.metadata.get(key) {
            None => Err(format_error(key, "missing metadata key")),
            Some(value) => value
                .as_str()
                .ok_or_else(|| format_error(key, format!("expected a string, found {value:?}"))),
        }
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Returns the raw bytes of a tensor's data.
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &'a [u8] {
        // `parse` checked that the range lies inside the file.
        let start = (self.data_offset + info.offset) as usize;
        &self.bytes[start..start + info.size as usize]
    }

    /// Dequantises the tensor `name` to f32, returning the data and its row-major shape.
    ///
    /// Errors with [`Error::MissingTensor`] when no tensor has that name and with
    /// [`Error::UnsupportedTensorType`] for types other than F32, F16, Q8_0, Q4_0, Q4_1.
    pub fn dequantize(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let info = self
            .tensor_info(name)
            .ok_or_else(|| Error::MissingTensor(name.to_string()))?;
        let data = dequantize(info.kind, self.tensor_bytes(info), info.elements() as usize)
            .map_err(|_| Error::UnsupportedTensorType {
                tensor: name.to_string(),
                kind: info.kind.name(),
            })?;
        Ok((data, info.shape()))
    }
}

fn read_tensor_info(cursor: &mut Cursor<'_>, index: u64) -> Result<TensorInfo> {
    let name = cursor.string(&format!("tensor {index} name"))?;
    let n_dims = cursor.u32(&format!("tensor {name} n_dims"))?;
    if n_dims == 0 || n_dims > MAX_DIMS {
        return Err(format_error(
            format!("tensor {name} n_dims"),
            format!("{n_dims} dimensions (expected 1 to {MAX_DIMS})"),
        ));
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for axis in 0..n_dims {
        dims.push(cursor.u64(&format!("tensor {name} dims[{axis}]"))?);
    }
    let kind = TensorType::from_id(cursor.u32(&format!("tensor {name} type"))?);
    let offset = cursor.u64(&format!("tensor {name} offset"))?;

    let elements = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= i64::MAX as u64)
        .ok_or_else(|| {
            format_error(
                format!("tensor {name} dims"),
                format!("{dims:?} overflows the element count"),
            )
        })?;
    let size = match kind.block_layout() {
        None => 0,
        Some((block_elements, block_bytes)) => {
            if !dims[0].is_multiple_of(block_elements) {
                return Err(format_error(
                    format!("tensor {name} dims"),
                    format!(
                        "first dimension {} is not a multiple of the {} block size {block_elements}",
                        dims[0],
                        kind.name()
                    ),
                ));
            }
            (elements / block_elements)
                .checked_mul(block_bytes)
                .ok_or_else(|| {
                    format_error(format!("tensor {name} dims"), "data size overflows u64")
                })?
        }
    };
    Ok(TensorInfo {
        name,
        dims,
        kind,
        offset,
        size,
    })
}

/// Dequantises `elements` values of `kind` from `bytes` to f32.
///
/// Errors (with the type name) for unsupported types and when `bytes` does not hold
/// exactly `elements` values.
pub fn dequantize(kind: TensorType, bytes: &[u8], elements: usize) -> Result<Vec<f32>, String> {
    let (block_elements, block_bytes) = kind.block_layout().ok_or_else(|| kind.name())?;
    let blocks = elements / block_elements as usize;
    if !elements.is_multiple_of(block_elements as usize)
        || bytes.len() != blocks * block_bytes as usize
    {
        return Err(format!(
            "{} data of {} bytes does not hold {elements} elements",
            kind.name(),
            bytes.len()
        ));
    }
    let half_at = |b: &[u8], i: usize| f16::from_le_bytes([b[i], b[i + 1]]).to_f32();
    let mut out = Vec::with_capacity(elements);
    match kind {
        TensorType::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        TensorType::F16 => out.extend(bytes.chunks_exact(2).map(|c| half_at(c, 0))),
        TensorType::Q8_0 => {
            for block in bytes.chunks_exact(34) {
                let scale = half_at(block, 0);
                out.extend(block[2..].iter().map(|&q| q as i8 as f32 * scale));
            }
        }
        TensorType::Q4_0 => {
            for block in bytes.chunks_exact(18) {
                let scale = half_at(block, 0);
                let nibbles = &block[2..];
                // Low nibbles hold elements 0..16 and high nibbles 16..32.
                out.extend(nibbles.iter().map(|&q| ((q & 0xf) as f32 - 8.0) * scale));
                out.extend(nibbles.iter().map(|&q| ((q >> 4) as f32 - 8.0) * scale));
            }
        }
        TensorType::Q4_1 => {
            for block in bytes.chunks_exact(20) {
                let scale = half_at(block, 0);
                let min = half_at(block, 2);
                let nibbles = &block[4..];
                out.extend(nibbles.iter().map(|&q| (q & 0xf) as f32 * scale + min));
                out.extend(nibbles.iter().map(|&q| (q >> 4) as f32 * scale + min));
            }
        }
        TensorType::Other(_) => return Err(kind.name()),
    }
    Ok(out)
}
