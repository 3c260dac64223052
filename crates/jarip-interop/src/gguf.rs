//! GGUF version 3, the single-file container llama.cpp and the ggml ecosystem read: metadata
//! key/values followed by tensors, written by [`GgufWriter`] and read by [`GgufFile`] (which also
//! reads version 2, the same layout, as candle's writer emits it).
//!
//! Why not candle's `quantized::gguf_file`: its reader allocates what a header's counts claim
//! before checking the bytes exist, and its writer emits version 2 with a fixed alignment.
//! `tests/gguf_candle.rs` checks that each side reads what the other writes.
//!
//! Layout (all little-endian; written from the spec in ggml's `docs/gguf.md`):
//!
//! ```text
//! "GGUF"  u32 version = 3  u64 tensor_count  u64 metadata_kv_count
//! metadata_kv_count × { string key, u32 value_type, value }
//! tensor_count × { string name, u32 n_dims, u64 dims[n_dims], u32 ggml_type, u64 offset }
//! zero padding to the alignment
//! data section: each tensor at `offset` (relative to the section, a multiple of the
//!               alignment), zero-padded to the alignment
//! ```
//!
//! A string is a u64 byte length then UTF-8 bytes (no terminator). An array value is a u32
//! element type, a u64 element count, then the elements. The alignment is the `u32` metadata
//! key `general.alignment`, 32 when absent.
//!
//! Dimension order: `dims[0]` is the fastest-varying (the number of columns), the reverse of a
//! row-major (PyTorch, candle) shape. A `[rows, cols]` weight is stored with `dims = [cols,
//! rows]`; [`GgufWriter::add_tensor`] takes the row-major shape and reverses it,
//! [`TensorInfo::shape`] reverses it back.
//!
//! Tensor types handled: `F32`, `F16`, `BF16` and `Q8_0` (see [`jarip_kernels::quant`]). Arrays of
//! arrays, which the spec allows but llama.cpp refuses, are refused here too.
//!
//! The reader treats the file as untrusted: every malformed input is an error naming the file
//! and the problem, never a panic, and no allocation is sized by a count before the bytes that
//! count promises have been checked to exist.

use anyhow::{anyhow, bail, Context, Result};
use half::{bf16, f16};
use jarip_kernels::quant::{dequantize_q8_0, q8_0_from_bytes, q8_0_to_bytes, quantize_q8_0, QK8_0};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::Write;
use std::path::Path;

/// The first four bytes of every GGUF file.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// The format version this module reads and writes.
pub const GGUF_VERSION: u32 = 3;
/// The metadata key holding the alignment (a `u32`).
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// The alignment when [`ALIGNMENT_KEY`] is absent.
pub const DEFAULT_ALIGNMENT: u32 = 32;
/// Most dimensions a tensor may have (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;
/// Longest tensor name in bytes (ggml's `GGML_MAX_NAME` is 64 including the NUL).
pub const MAX_TENSOR_NAME_BYTES: usize = 63;
/// Longest metadata key in bytes (the spec's limit).
pub const MAX_KEY_BYTES: usize = 65535;

/// A metadata value type, with its on-disk id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    Str = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    pub fn from_id(id: u32) -> Option<Self> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => Str,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    pub fn id(self) -> u32 {
        self as u32
    }

    /// The fewest bytes one value of this type occupies on disk.
    fn min_encoded_len(self) -> u64 {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | Str => 8,
            Array => 12,
        }
    }
}

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    U64(u64),
    I64(i64),
    F64(f64),
    /// Elements all of one type, and not arrays themselves. An empty array is written with
    /// element type `UINT8` (its type cannot be recovered from `Vec::new()`).
    Array(Vec<Value>),
}

impl Value {
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::Str(_) => ValueType::Str,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
            Value::Array(_) => ValueType::Array,
        }
    }

    /// Any integer value that is non-negative, widened.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer value that fits an i64, widened.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v),
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => i64::try_from(v).ok(),
            _ => None,
        }
    }

    /// An `F32` or `F64` value, widened.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The element type an array is written with; errors on mixed or nested arrays.
    fn array_elem_type(items: &[Value]) -> Result<ValueType> {
        let Some(first) = items.first() else { return Ok(ValueType::U8) };
        let ty = first.value_type();
        if ty == ValueType::Array {
            bail!("nested arrays are not supported (llama.cpp refuses them)");
        }
        if let Some((i, v)) = items.iter().enumerate().find(|(_, v)| v.value_type() != ty) {
            bail!("array elements must share one type: element 0 is {ty:?}, element {i} is {:?}", v.value_type());
        }
        Ok(ty)
    }

    fn check_writable(&self) -> Result<()> {
        if let Value::Array(items) = self {
            Self::array_elem_type(items)?;
        }
        Ok(())
    }

    /// Appends the value's payload (not its type id) to `out`.
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Value::U8(v) => out.push(*v),
            Value::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::Bool(v) => out.push(u8::from(*v)),
            Value::Str(s) => put_str(out, s),
            Value::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::Array(items) => {
                // Checked when the value was added to the writer.
                let ty = Self::array_elem_type(items).unwrap_or(ValueType::U8);
                out.extend_from_slice(&ty.id().to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for v in items {
                    v.encode(out);
                }
            }
        }
    }
}

macro_rules! value_from {
    ($($t:ty => $v:ident),*) => {
        $(impl From<$t> for Value {
            fn from(x: $t) -> Self {
                Value::$v(x)
            }
        })*
    };
}
value_from!(u8 => U8, i8 => I8, u16 => U16, i16 => I16, u32 => U32, i32 => I32, f32 => F32, bool => Bool,
    String => Str, u64 => U64, i64 => I64, f64 => F64);

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_string())
    }
}

impl<T: Into<Value>> From<Vec<T>> for Value {
    fn from(v: Vec<T>) -> Self {
        Value::Array(v.into_iter().map(Into::into).collect())
    }
}

/// llama.cpp's name of a ggml type id, for refusing the ones this reader does not handle by name.
pub fn ggml_type_name(id: u32) -> String {
    const NAMES: [&str; 40] = [
        "F32",
        "F16",
        "Q4_0",
        "Q4_1",
        "Q4_2",
        "Q4_3",
        "Q5_0",
        "Q5_1",
        "Q8_0",
        "Q8_1",
        "Q2_K",
        "Q3_K",
        "Q4_K",
        "Q5_K",
        "Q6_K",
        "Q8_K",
        "IQ2_XXS",
        "IQ2_XS",
        "IQ3_XXS",
        "IQ1_S",
        "IQ4_NL",
        "IQ3_S",
        "IQ2_S",
        "IQ4_XS",
        "I8",
        "I16",
        "I32",
        "I64",
        "F64",
        "IQ1_M",
        "BF16",
        "Q4_0_4_4",
        "Q4_0_4_8",
        "Q4_0_8_8",
        "TQ1_0",
        "TQ2_0",
        "IQ4_NL_4_4",
        "IQ4_NL_4_8",
        "IQ4_NL_8_8",
        "MXFP4",
    ];
    match NAMES.get(id as usize) {
        Some(n) => format!("ggml type {n} ({id})"),
        None => format!("ggml type {id}"),
    }
}

/// A ggml tensor type this module handles, with its on-disk id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q8_0,
    BF16,
}

impl GgmlType {
    pub fn from_id(id: u32) -> Option<Self> {
        match id {
            0 => Some(GgmlType::F32),
            1 => Some(GgmlType::F16),
            8 => Some(GgmlType::Q8_0),
            30 => Some(GgmlType::BF16),
            _ => None,
        }
    }

    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q8_0 => 8,
            GgmlType::BF16 => 30,
        }
    }

    /// Values per block (32 for `Q8_0`, else 1).
    pub fn block_len(self) -> u64 {
        match self {
            GgmlType::Q8_0 => QK8_0 as u64,
            _ => 1,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> u64 {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q8_0 => 2 + QK8_0 as u64,
        }
    }

    /// Bytes of a tensor with ggml-order `dims`. Errors if `dims[0]` is not a whole number of
    /// blocks or the size overflows.
    pub fn byte_len(self, dims: &[u64]) -> Result<u64> {
        let n = n_elements(dims).ok_or_else(|| anyhow!("element count of dims {dims:?} overflows"))?;
        let row = dims.first().copied().unwrap_or(1);
        if !row.is_multiple_of(self.block_len()) {
            bail!("{self:?} needs the row length (dims[0] = {row}) to be a multiple of {}", self.block_len());
        }
        (n / self.block_len())
            .checked_mul(self.block_bytes())
            .ok_or_else(|| anyhow!("byte size of {self:?} tensor with dims {dims:?} overflows"))
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::BF16 => "BF16",
        })
    }
}

/// Element count of ggml dims, `None` on overflow or beyond `i64::MAX` (ggml counts in i64).
fn n_elements(dims: &[u64]) -> Option<u64> {
    dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d)).filter(|&n| n <= i64::MAX as u64)
}

/// Encodes f32 values (in row-major order) as the bytes of a `ty` tensor: F16 and BF16 round to
/// nearest, `Q8_0` quantizes each run of 32 (see [`jarip_kernels::quant`]).
pub fn encode_f32(values: &[f32], ty: GgmlType) -> Result<Vec<u8>> {
    Ok(match ty {
        GgmlType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        GgmlType::F16 => values.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect(),
        GgmlType::BF16 => values.iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes()).collect(),
        GgmlType::Q8_0 => {
            if !values.len().is_multiple_of(QK8_0) {
                bail!("Q8_0 needs a multiple of {QK8_0} values, got {}", values.len());
            }
            q8_0_to_bytes(&quantize_q8_0(values))
        }
    })
}

/// Decodes the bytes of a `ty` tensor to f32 values.
pub fn decode_f32(bytes: &[u8], ty: GgmlType) -> Result<Vec<f32>> {
    let width = match ty {
        GgmlType::F32 => 4,
        GgmlType::F16 | GgmlType::BF16 => 2,
        GgmlType::Q8_0 => {
            let blocks = q8_0_from_bytes(bytes)?;
            let mut out = vec![0.0; blocks.len() * QK8_0];
            dequantize_q8_0(&blocks, &mut out);
            return Ok(out);
        }
    };
    if !bytes.len().is_multiple_of(width) {
        bail!("{ty} data of {} bytes is not a whole number of {width}-byte values", bytes.len());
    }
    let c = bytes.chunks_exact(width);
    Ok(match ty {
        GgmlType::F32 => c.map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        GgmlType::F16 => c.map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        _ => c.map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
    })
}

/// Where a tensor is and what it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the fastest-varying (columns). See [`TensorInfo::shape`].
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Byte offset from the start of the data section; a multiple of the alignment.
    pub offset: u64,
}

impl TensorInfo {
    /// The row-major shape (`dims` reversed): `[rows, cols]` for a matrix.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// Element count (0 if `dims` overflow, which a parsed file never has).
    pub fn n_elements(&self) -> u64 {
        n_elements(&self.dims).unwrap_or(0)
    }

    /// Size of the tensor's data in bytes (0 if `dims` are invalid for the type, which a parsed
    /// file never has).
    pub fn byte_len(&self) -> u64 {
        self.ty.byte_len(&self.dims).unwrap_or(0)
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn align_up(x: u64, alignment: u64) -> Option<u64> {
    Some(x.checked_add(alignment - 1)? / alignment * alignment)
}

/// Builds a GGUF file in memory, then writes it in one go.
#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<(TensorInfo, Vec<u8>)>,
    tensor_names: HashSet<String>,
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a metadata pair; pairs are written in the order added. Errors on a repeated key, a
    /// mixed or nested array, or a `general.alignment` that is not a `U32` power of two ≥ 8.
    pub fn add_metadata(&mut self, key: impl Into<String>, value: Value) -> Result<()> {
        let key = key.into();
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            bail!("metadata key must be 1 to {MAX_KEY_BYTES} bytes, got {}", key.len());
        }
        if self.metadata.iter().any(|(k, _)| *k == key) {
            bail!("metadata key '{key}' added twice");
        }
        value.check_writable().with_context(|| format!("metadata key '{key}'"))?;
        if key == ALIGNMENT_KEY {
            match value {
                Value::U32(a) if a >= 8 && a.is_power_of_two() => {}
                _ => bail!("{ALIGNMENT_KEY} must be a U32 power of two, at least 8; got {value:?}"),
            }
        }
        self.metadata.push((key, value));
        Ok(())
    }

    /// The alignment the file will use: `general.alignment` if added, else 32.
    pub fn alignment(&self) -> u32 {
        self.metadata
            .iter()
            .find_map(|(k, v)| match v {
                Value::U32(a) if k == ALIGNMENT_KEY => Some(*a),
                _ => None,
            })
            .unwrap_or(DEFAULT_ALIGNMENT)
    }

    /// Adds a tensor from its encoded `bytes` (see [`encode_f32`]).
    ///
    /// `shape` is the **row-major** shape (PyTorch / candle order, slowest-varying first); it is
    /// stored reversed, as ggml wants, so a `[rows, cols]` weight gets `dims = [cols, rows]`.
    /// Errors on a repeated or over-long name (> 63 bytes), a shape that is empty, has more than
    /// 4 dimensions or a zero dimension, a `Q8_0` row length (`cols`) that is not a multiple of
    /// 32, or `bytes` of the wrong length.
    pub fn add_tensor(&mut self, name: impl Into<String>, shape: &[usize], ty: GgmlType, bytes: Vec<u8>) -> Result<()> {
        let name = name.into();
        if name.is_empty() || name.len() > MAX_TENSOR_NAME_BYTES {
            bail!("tensor name '{name}' must be 1 to {MAX_TENSOR_NAME_BYTES} bytes, got {}", name.len());
        }
        if self.tensor_names.contains(&name) {
            bail!("tensor '{name}' added twice");
        }
        if shape.is_empty() || shape.len() > MAX_DIMS || shape.contains(&0) {
            bail!("tensor '{name}': shape {shape:?} must have 1 to {MAX_DIMS} dimensions, none of them 0");
        }
        let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        let want = ty.byte_len(&dims).with_context(|| format!("tensor '{name}' of shape {shape:?}"))?;
        if bytes.len() as u64 != want {
            bail!("tensor '{name}': {ty} of shape {shape:?} needs {want} bytes, got {}", bytes.len());
        }
        self.tensor_names.insert(name.clone());
        self.tensors.push((TensorInfo { name, dims, ty, offset: 0 }, bytes));
        Ok(())
    }

    /// Encodes `values` (row-major) as `ty` and adds them; see [`GgufWriter::add_tensor`].
    pub fn add_tensor_f32(
        &mut self,
        name: impl Into<String>,
        shape: &[usize],
        ty: GgmlType,
        values: &[f32],
    ) -> Result<()> {
        let name = name.into();
        let bytes = encode_f32(values, ty).with_context(|| format!("tensor '{name}'"))?;
        self.add_tensor(name, shape, ty, bytes)
    }

    /// Everything before the data section, padding included, with each tensor's offset
    /// assigned in order.
    fn header(&self) -> Vec<u8> {
        let align = u64::from(self.alignment());
        let mut h = Vec::new();
        h.extend_from_slice(&GGUF_MAGIC);
        h.extend_from_slice(&GGUF_VERSION.to_le_bytes());
        h.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        h.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut h, k);
            h.extend_from_slice(&v.value_type().id().to_le_bytes());
            v.encode(&mut h);
        }
        let mut offset = 0u64;
        for (t, bytes) in &self.tensors {
            put_str(&mut h, &t.name);
            h.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                h.extend_from_slice(&d.to_le_bytes());
            }
            h.extend_from_slice(&t.ty.id().to_le_bytes());
            h.extend_from_slice(&offset.to_le_bytes());
            offset = align_up(offset + bytes.len() as u64, align).expect("in-memory sizes fit u64");
        }
        h.resize(align_up(h.len() as u64, align).expect("in-memory sizes fit u64") as usize, 0);
        h
    }

    /// Writes the whole file to `w`; returns the number of bytes written.
    pub fn write_to<W: Write>(&self, w: &mut W) -> Result<u64> {
        let align = self.alignment() as usize;
        let header = self.header();
        w.write_all(&header)?;
        let mut written = header.len() as u64;
        let zeros = vec![0u8; align];
        for (_, bytes) in &self.tensors {
            w.write_all(bytes)?;
            let pad = (align - bytes.len() % align) % align;
            w.write_all(&zeros[..pad])?;
            written += (bytes.len() + pad) as u64;
        }
        Ok(written)
    }

    /// Writes the file atomically (a temporary file beside `path`, renamed into place).
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut f = jarip_ledger::AtomicFile::create(path)?;
        self.write_to(&mut f).with_context(|| format!("cannot write {}", path.display()))?;
        f.commit()
    }
}

enum Storage {
    Mmap(jarip_kernels::mmap::Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mmap(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// A GGUF file, parsed and checked: metadata and tensor infos in memory, tensor data mapped.
pub struct GgufFile {
    pub version: u32,
    /// In file order.
    pub metadata: Vec<(String, Value)>,
    /// In file order.
    pub tensors: Vec<TensorInfo>,
    pub alignment: u32,
    /// Where the data section starts, in bytes from the start of the file.
    pub data_offset: u64,
    source: String,
    storage: Storage,
    meta_index: HashMap<String, usize>,
    tensor_index: HashMap<String, usize>,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("source", &self.source)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .finish()
    }
}

impl GgufFile {
    /// Memory-maps and parses `path`. The whole header and every tensor's bounds are checked
    /// here, so later accessors fail only on unknown names.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        // Read-only; jarip itself only ever replaces files by rename (see `map_readonly`).
        let map = jarip_kernels::mmap::map_readonly(&file, path)?;
        Self::parse(Storage::Mmap(map), path.display().to_string())
    }

    /// Parses a file held in memory; `source` names it in error messages.
    pub fn from_bytes(bytes: Vec<u8>, source: &str) -> Result<Self> {
        Self::parse(Storage::Owned(bytes), source.to_string())
    }

    fn parse(storage: Storage, source: String) -> Result<Self> {
        let h = parse_header(storage.bytes(), &source)?;
        let meta_index = h.metadata.iter().enumerate().map(|(i, (k, _))| (k.clone(), i)).collect();
        let tensor_index = h.tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        Ok(Self {
            version: h.version,
            metadata: h.metadata,
            tensors: h.tensors,
            alignment: h.alignment,
            data_offset: h.data_offset,
            source,
            storage,
            meta_index,
            tensor_index,
        })
    }

    /// The value of a metadata key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.meta_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// A tensor's info, by name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    fn tensor_or_err(&self, name: &str) -> Result<&TensorInfo> {
        self.tensor(name).ok_or_else(|| anyhow!("{}: no tensor named '{name}'", self.source))
    }

    /// A tensor's raw bytes (in its own type's encoding), straight from the map.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8]> {
        let t = self.tensor_or_err(name)?;
        // Bounds were checked at parse time; checked again in case the public fields were edited.
        let start = self.data_offset.checked_add(t.offset);
        let range = start.and_then(|s| Some(usize::try_from(s).ok()?..usize::try_from(s + t.byte_len()).ok()?));
        range
            .and_then(|r| self.storage.bytes().get(r))
            .ok_or_else(|| anyhow!("{}: tensor '{name}' lies outside the file", self.source))
    }

    /// A tensor's values as f32 in row-major order (F16 / BF16 widened, `Q8_0` dequantized).
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.tensor_or_err(name)?;
        decode_f32(self.tensor_bytes(name)?, t.ty).with_context(|| format!("{}: tensor '{name}'", self.source))
    }
}

struct Header {
    version: u32,
    metadata: Vec<(String, Value)>,
    tensors: Vec<TensorInfo>,
    alignment: u32,
    data_offset: u64,
}

/// A bounds-checked little-endian cursor whose errors name the file and the byte position.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    source: &'a str,
}

impl<'a> Cursor<'a> {
    fn err(&self, msg: impl fmt::Display) -> anyhow::Error {
        anyhow!("{}: {msg} (at byte {})", self.source, self.pos)
    }

    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &dyn fmt::Display) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(
                self.err(format_args!("truncated file: {what} needs {n} bytes, only {} remain", self.remaining()))
            );
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &dyn fmt::Display) -> Result<[u8; N]> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &dyn fmt::Display) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn fmt::Display) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &dyn fmt::Display) -> Result<String> {
        let len = self.u64(what)?;
        let start = self.pos;
        let bytes = self.take(len, what)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_string()),
            Err(_) => {
                self.pos = start;
                Err(self.err(format_args!("{what} is not valid UTF-8")))
            }
        }
    }

    fn value_type(&mut self, what: &dyn fmt::Display) -> Result<ValueType> {
        let id = self.u32(what)?;
        ValueType::from_id(id).ok_or_else(|| self.err(format_args!("{what}: unknown value type {id}")))
    }

    fn value(&mut self, ty: ValueType, what: &dyn fmt::Display) -> Result<Value> {
        Ok(match ty {
            ValueType::U8 => Value::U8(u8::from_le_bytes(self.array(what)?)),
            ValueType::I8 => Value::I8(i8::from_le_bytes(self.array(what)?)),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            ValueType::U32 => Value::U32(u32::from_le_bytes(self.array(what)?)),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            ValueType::U64 => Value::U64(u64::from_le_bytes(self.array(what)?)),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(what)?)),
            ValueType::Bool => match self.array::<1>(what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => {
                    self.pos -= 1;
                    return Err(self.err(format_args!("{what}: bool byte is {b}, not 0 or 1")));
                }
            },
            ValueType::Str => Value::Str(self.string(what)?),
            ValueType::Array => {
                let elem = self.value_type(what)?;
                if elem == ValueType::Array {
                    return Err(self.err(format_args!("{what}: nested arrays are not supported")));
                }
                let count = self.u64(what)?;
                // Every element takes at least `min_encoded_len` bytes, so a count the rest of
                // the file cannot hold is corrupt, and is caught before anything is allocated.
                if count.checked_mul(elem.min_encoded_len()).is_none_or(|n| n > self.remaining()) {
                    return Err(self.err(format_args!(
                        "{what}: array of {count} {elem:?} elements cannot fit in the {} bytes left (truncated or corrupt)",
                        self.remaining()
                    )));
                }
                let mut items = Vec::with_capacity(count.min(1 << 16) as usize);
                for i in 0..count {
                    items.push(self.value(elem, &format_args!("{what}, element {i}"))?);
                }
                Value::Array(items)
            }
        })
    }
}

fn parse_header(buf: &[u8], source: &str) -> Result<Header> {
    let mut c = Cursor { buf, pos: 0, source };
    let magic: [u8; 4] = c.array(&"the magic number")?;
    if magic != GGUF_MAGIC {
        c.pos = 0;
        return Err(c.err(format_args!("not a GGUF file: magic is {magic:02x?}, expected \"GGUF\"")));
    }
    let version = c.u32(&"the version")?;
    // Version 2 (what candle and older converters write) has version 3's layout; version 3 only
    // added big-endian files, which the byte order of the version itself gives away.
    if !(2..=GGUF_VERSION).contains(&version) {
        c.pos = 4;
        let hint = if (2..=GGUF_VERSION).contains(&version.swap_bytes()) { " (a big-endian file?)" } else { "" };
        return Err(c.err(format_args!("unsupported GGUF version {version}{hint}; versions 2 and 3 are read")));
    }
    let tensor_count = c.u64(&"the tensor count")?;
    let kv_count = c.u64(&"the metadata count")?;

    // Capacities are capped by what the remaining bytes could hold (a key/value takes at least
    // 13 bytes, a tensor info at least 24), so a corrupt count cannot force a huge allocation.
    let mut metadata: Vec<(String, Value)> = Vec::with_capacity(kv_count.min(c.remaining() / 13) as usize);
    let mut seen = HashSet::new();
    for i in 0..kv_count {
        let key_start = c.pos;
        let key = c.string(&format_args!("metadata key #{i}"))?;
        if !seen.insert(key.clone()) {
            c.pos = key_start;
            return Err(c.err(format_args!("duplicate metadata key '{key}'")));
        }
        let what = format!("metadata '{key}'");
        let ty = c.value_type(&what)?;
        let value = c.value(ty, &what)?;
        metadata.push((key, value));
    }

    let alignment = match metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) {
        None => DEFAULT_ALIGNMENT,
        Some((_, Value::U32(a))) if a.is_power_of_two() => *a,
        Some((_, v)) => return Err(c.err(format_args!("{ALIGNMENT_KEY} must be a U32 power of two, got {v:?}"))),
    };

    let mut tensors: Vec<TensorInfo> = Vec::with_capacity(tensor_count.min(c.remaining() / 24) as usize);
    let mut names = HashSet::new();
    for i in 0..tensor_count {
        let start = c.pos;
        let name = c.string(&format_args!("tensor info #{i}: name"))?;
        if !names.insert(name.clone()) {
            c.pos = start;
            return Err(c.err(format_args!("duplicate tensor name '{name}'")));
        }
        let what = format!("tensor '{name}'");
        let n_dims = c.u32(&what)?;
        if n_dims as usize > MAX_DIMS {
            c.pos -= 4;
            return Err(c.err(format_args!("{what} has {n_dims} dimensions, at most {MAX_DIMS} are allowed")));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(c.u64(&what)?);
        }
        let type_id = c.u32(&what)?;
        let Some(ty) = GgmlType::from_id(type_id) else {
            c.pos -= 4;
            return Err(c.err(format_args!(
                "{what} is stored as {}, which jarip does not read (it reads F32, F16, BF16 and Q8_0: \
                 re-quantize with llama.cpp's llama-quantize to Q8_0, or convert to f16)",
                ggml_type_name(type_id)
            )));
        };
        if let Err(e) = ty.byte_len(&dims) {
            return Err(c.err(format_args!("{what}: {e}")));
        }
        let offset = c.u64(&what)?;
        if !offset.is_multiple_of(u64::from(alignment)) {
            c.pos -= 8;
            return Err(
                c.err(format_args!("{what}: data offset {offset} is not a multiple of the alignment {alignment}"))
            );
        }
        tensors.push(TensorInfo { name, dims, ty, offset });
    }

    let header_end = c.pos as u64;
    let data_offset = align_up(header_end, u64::from(alignment)).expect("a slice length plus u32 fits u64");
    let file_len = buf.len() as u64;
    for t in &tensors {
        let end = data_offset.checked_add(t.offset).and_then(|s| s.checked_add(t.byte_len()));
        if end.is_none_or(|e| e > file_len) {
            return Err(anyhow!(
                "{source}: tensor data out of bounds: '{}' ({} bytes at data offset {}) ends past the end of the \
                 {file_len}-byte file, whose data section starts at byte {data_offset}",
                t.name,
                t.byte_len(),
                t.offset
            ));
        }
    }
    Ok(Header { version, metadata, tensors, alignment, data_offset })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn every_value() -> Vec<(&'static str, Value)> {
        vec![
            ("t.u8", Value::U8(200)),
            ("t.i8", Value::I8(-100)),
            ("t.u16", Value::U16(60000)),
            ("t.i16", Value::I16(-30000)),
            ("t.u32", Value::U32(4_000_000_000)),
            ("t.i32", Value::I32(-2_000_000_000)),
            ("t.f32", Value::F32(-1.5e-3)),
            ("t.bool_true", Value::Bool(true)),
            ("t.bool_false", Value::Bool(false)),
            ("t.str", Value::from("한국어 and English")),
            ("t.empty_str", Value::from("")),
            ("t.u64", Value::U64(u64::MAX - 1)),
            ("t.i64", Value::I64(i64::MIN + 1)),
            ("t.f64", Value::F64(std::f64::consts::PI)),
            ("t.arr_str", Value::from(vec!["a", "", "토큰", "<|endoftext|>"])),
            ("t.arr_i32", Value::from(vec![1i32, -2, 3])),
            ("t.arr_u64", Value::from(vec![u64::MAX, 0])),
            ("t.arr_f64", Value::from(vec![0.25f64, -1e300])),
            ("t.arr_f32", Value::from(vec![1.0f32, f32::MIN_POSITIVE])),
            ("t.arr_bool", Value::from(vec![true, false, true])),
            ("t.arr_u8", Value::from(vec![0u8, 255])),
            ("t.arr_i8", Value::from(vec![-128i8, 127])),
            ("t.arr_u16", Value::from(vec![1u16])),
            ("t.arr_i16", Value::from(vec![-1i16])),
            ("t.arr_u32", Value::from(vec![7u32, 8])),
            ("t.arr_i64", Value::from(vec![i64::MAX])),
            ("t.arr_empty", Value::Array(vec![])),
        ]
    }

    fn ramp(n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|i| ((i * 7919 % 257) as f32 - 128.0) * scale).collect()
    }

    /// A writer with metadata of every type and one tensor of each type.
    fn sample_writer() -> GgufWriter {
        let mut w = GgufWriter::new();
        w.add_metadata("general.architecture", Value::from("jarip")).unwrap();
        for (k, v) in every_value() {
            w.add_metadata(k, v).unwrap();
        }
        w.add_tensor_f32("f32", &[3, 5], GgmlType::F32, &ramp(15, 0.1)).unwrap();
        w.add_tensor_f32("f16", &[2, 3], GgmlType::F16, &ramp(6, 0.01)).unwrap();
        w.add_tensor_f32("bf16", &[7], GgmlType::BF16, &ramp(7, 0.3)).unwrap();
        w.add_tensor_f32("q8", &[3, 64], GgmlType::Q8_0, &ramp(192, 0.02)).unwrap();
        w
    }

    fn to_bytes(w: &GgufWriter) -> Vec<u8> {
        let mut out = Vec::new();
        let n = w.write_to(&mut out).unwrap();
        assert_eq!(n, out.len() as u64);
        out
    }

    fn err_of(bytes: Vec<u8>) -> String {
        format!("{:#}", GgufFile::from_bytes(bytes, "test.gguf").unwrap_err())
    }

    #[test]
    fn round_trip_metadata_and_tensors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        sample_writer().write(&path).unwrap();
        let f = GgufFile::open(&path).unwrap();
        assert_eq!(f.version, 3);
        assert_eq!(f.alignment, 32);
        // Every value comes back, in insertion order.
        let mut expected = vec![("general.architecture", Value::from("jarip"))];
        expected.extend(every_value());
        let got: Vec<(&str, Value)> = f.metadata.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        assert_eq!(got, expected);
        assert_eq!(f.get("t.u64"), Some(&Value::U64(u64::MAX - 1)));
        assert_eq!(f.get("t.f64").and_then(Value::as_f64), Some(std::f64::consts::PI));
        assert_eq!(f.get("missing"), None);

        let names: Vec<&str> = f.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["f32", "f16", "bf16", "q8"]);
        // Row-major [3, 5] is stored as ggml dims [5, 3].
        let t = f.tensor("f32").unwrap();
        assert_eq!(t.dims, [5, 3]);
        assert_eq!(t.shape(), [3, 5]);
        assert_eq!(f.tensor("q8").unwrap().dims, [64, 3]);

        assert_eq!(f.tensor_f32("f32").unwrap(), ramp(15, 0.1));
        let close = |got: Vec<f32>, want: Vec<f32>, rel: f32, abs: f32| {
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= rel * w.abs() + abs, "{g} vs {w}");
            }
        };
        close(f.tensor_f32("f16").unwrap(), ramp(6, 0.01), 1.0 / 2048.0, 0.0);
        close(f.tensor_f32("bf16").unwrap(), ramp(7, 0.3), 1.0 / 256.0, 0.0);
        // Q8_0: within half a step of the block scale (|x| ≤ 2.56, d ≈ 0.02) plus f16 rounding.
        close(f.tensor_f32("q8").unwrap(), ramp(192, 0.02), 0.0, 2.56 / 127.0 * 0.51);
        // Raw bytes are the writer's bytes.
        assert_eq!(f.tensor_bytes("q8").unwrap(), encode_f32(&ramp(192, 0.02), GgmlType::Q8_0).unwrap());
        assert!(f.tensor_bytes("nope").unwrap_err().to_string().contains("no tensor named 'nope'"));
    }

    #[test]
    fn offsets_and_data_start_are_aligned() {
        for align in [32u32, 64, 8] {
            let mut w = GgufWriter::new();
            if align != 32 {
                w.add_metadata(ALIGNMENT_KEY, Value::U32(align)).unwrap();
            }
            w.add_metadata("x.name", Value::from("odd-length")).unwrap();
            let tensors: [(&str, &[usize], GgmlType); 4] = [
                ("a", &[3], GgmlType::F32),
                ("b", &[1, 5], GgmlType::F16),
                ("c", &[2, 32], GgmlType::Q8_0),
                ("d", &[1, 1, 1, 1], GgmlType::BF16),
            ];
            for (i, (name, shape, ty)) in tensors.iter().enumerate() {
                let n: usize = shape.iter().product();
                w.add_tensor_f32(*name, shape, *ty, &ramp(n, 0.5 + i as f32)).unwrap();
            }
            let bytes = to_bytes(&w);
            let a = align as usize;
            // Header size computed by hand from the layout.
            let mut kv = 8 + ALIGNMENT_KEY.len() + 4 + 4;
            if align == 32 {
                kv = 0;
            }
            kv += 8 + "x.name".len() + 4 + 8 + "odd-length".len();
            let infos: usize = tensors.iter().map(|(n, s, _)| 8 + n.len() + 4 + 8 * s.len() + 4 + 8).sum();
            let header_end = 24 + kv + infos;
            let data_start = header_end.div_ceil(a) * a;
            assert!(bytes[header_end..data_start].iter().all(|&b| b == 0));
            assert_eq!(bytes.len() % a, 0);

            let f = GgufFile::from_bytes(bytes.clone(), "t").unwrap();
            assert_eq!(f.alignment, align);
            assert_eq!(f.data_offset as usize, data_start);
            let mut expect_off = 0usize;
            for t in &f.tensors {
                assert_eq!(t.offset as usize, expect_off, "tensor {} with alignment {align}", t.name);
                assert!(t.offset.is_multiple_of(u64::from(align)));
                let start = data_start + expect_off;
                let len = t.byte_len() as usize;
                assert_eq!(&bytes[start..start + len], f.tensor_bytes(&t.name).unwrap());
                let padded = len.div_ceil(a) * a;
                assert!(bytes[start + len..start + padded].iter().all(|&b| b == 0));
                expect_off += padded;
            }
            assert_eq!(data_start + expect_off, bytes.len());
        }
    }

    #[test]
    fn tiny_header_is_byte_exact() {
        let mut w = GgufWriter::new();
        w.add_metadata("a.b", Value::U32(7)).unwrap();
        let mut want: Vec<u8> = Vec::new();
        want.extend_from_slice(b"GGUF");
        want.extend_from_slice(&[3, 0, 0, 0]); // version
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]); // tensor count
        want.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]); // metadata count
        want.extend_from_slice(&[3, 0, 0, 0, 0, 0, 0, 0]); // key length
        want.extend_from_slice(b"a.b");
        want.extend_from_slice(&[4, 0, 0, 0]); // UINT32
        want.extend_from_slice(&[7, 0, 0, 0]);
        assert_eq!(want.len(), 43);
        want.resize(64, 0); // padded to the 32-byte alignment
        assert_eq!(to_bytes(&w), want);

        // Add one F32 tensor [2]: its info follows the KV at byte 43; its data starts at byte 96.
        w.add_tensor("w", &[2], GgmlType::F32, encode_f32(&[1.0, -2.0], GgmlType::F32).unwrap()).unwrap();
        let b = to_bytes(&w);
        assert_eq!(&b[8..16], &1u64.to_le_bytes());
        let info = &b[43..43 + 8 + 1 + 4 + 8 + 4 + 8];
        let mut want_info = Vec::new();
        want_info.extend_from_slice(&1u64.to_le_bytes());
        want_info.push(b'w');
        want_info.extend_from_slice(&1u32.to_le_bytes());
        want_info.extend_from_slice(&2u64.to_le_bytes());
        want_info.extend_from_slice(&0u32.to_le_bytes());
        want_info.extend_from_slice(&0u64.to_le_bytes());
        assert_eq!(info, want_info);
        // 43 + 33 = 76 header bytes pad to 96; the 8 data bytes pad to 32.
        assert!(b[76..96].iter().all(|&x| x == 0));
        assert_eq!(&b[96..104], &[0, 0, 0x80, 0x3f, 0, 0, 0, 0xc0]);
        assert_eq!(b.len(), 128);
    }

    #[test]
    fn writer_rejects_bad_input() {
        let mut w = GgufWriter::new();
        w.add_metadata("k", Value::U8(1)).unwrap();
        assert!(w.add_metadata("k", Value::U8(2)).unwrap_err().to_string().contains("twice"));
        let mixed = w.add_metadata("m", Value::Array(vec![Value::U8(1), Value::I8(1)])).unwrap_err();
        assert!(format!("{mixed:#}").contains("share one type"), "{mixed:#}");
        let nested = w.add_metadata("n", Value::Array(vec![Value::Array(vec![])])).unwrap_err();
        assert!(format!("{nested:#}").contains("nested"));
        assert!(w.add_metadata(ALIGNMENT_KEY, Value::U32(48)).is_err());
        assert!(w.add_metadata(ALIGNMENT_KEY, Value::U64(64)).is_err());

        let e = w.add_tensor("t", &[2, 3], GgmlType::F32, vec![0; 20]).unwrap_err().to_string();
        assert!(e.contains("needs 24 bytes, got 20"), "{e}");
        assert!(w.add_tensor("q", &[32, 16], GgmlType::Q8_0, vec![0; 34 * 16]).is_err());
        assert!(w.add_tensor("z", &[0], GgmlType::F32, vec![]).is_err());
        assert!(w.add_tensor("five", &[1, 1, 1, 1, 1], GgmlType::F32, vec![0; 4]).is_err());
        assert!(w.add_tensor("x".repeat(64), &[1], GgmlType::F32, vec![0; 4]).is_err());
        w.add_tensor("t", &[2, 3], GgmlType::F32, vec![0; 24]).unwrap();
        assert!(w.add_tensor("t", &[2, 3], GgmlType::F32, vec![0; 24]).is_err());
    }

    // ---- Malformed input: hand-assembled files, independent of the writer. ----

    fn put_u32(b: &mut Vec<u8>, v: u32) {
        b.extend_from_slice(&v.to_le_bytes());
    }
    fn put_u64(b: &mut Vec<u8>, v: u64) {
        b.extend_from_slice(&v.to_le_bytes());
    }

    /// A file with the given KV and tensor-info sections, padded to 32, then `data`.
    fn raw(version: u32, n_tensors: u64, n_kv: u64, body: &[u8], data: &[u8]) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        put_u32(&mut b, version);
        put_u64(&mut b, n_tensors);
        put_u64(&mut b, n_kv);
        b.extend_from_slice(body);
        b.resize(b.len().div_ceil(32) * 32, 0);
        b.extend_from_slice(data);
        b
    }

    fn tensor_info(name: &str, dims: &[u64], ty: u32, offset: u64) -> Vec<u8> {
        let mut b = Vec::new();
        put_str(&mut b, name);
        put_u32(&mut b, dims.len() as u32);
        for &d in dims {
            put_u64(&mut b, d);
        }
        put_u32(&mut b, ty);
        put_u64(&mut b, offset);
        b
    }

    #[test]
    fn hand_assembled_file_reads() {
        let body = tensor_info("w", &[2], 0, 0);
        let f = GgufFile::from_bytes(raw(3, 1, 0, &body, &[0, 0, 0x80, 0x3f, 0, 0, 0, 0x40]), "t").unwrap();
        assert_eq!(f.tensor_f32("w").unwrap(), [1.0, 2.0]);
    }

    #[test]
    fn truncated_file_is_an_error() {
        let bytes = to_bytes(&sample_writer());
        let f = GgufFile::from_bytes(bytes.clone(), "t").unwrap();
        let last = f.tensors.last().unwrap();
        let data_end = (f.data_offset + last.offset + last.byte_len()) as usize;
        for cut in 0..data_end {
            let e = err_of(bytes[..cut].to_vec());
            assert!(e.starts_with("test.gguf: "), "{e}");
            assert!(e.contains("truncated") || e.contains("out of bounds"), "cut at {cut}: {e}");
        }
        // Only trailing padding missing: still readable.
        GgufFile::from_bytes(bytes[..data_end].to_vec(), "t").unwrap();
        let e = err_of(vec![]);
        assert!(e.contains("truncated file: the magic number needs 4 bytes, only 0 remain"), "{e}");
    }

    #[test]
    fn bad_magic_and_versions() {
        let mut b = raw(3, 0, 0, &[], &[]);
        b[0] = b'g';
        assert!(err_of(b).contains("not a GGUF file"));
        // Version 1 (32-bit counts) is refused; version 2 shares version 3's layout and is read.
        let e = err_of(raw(1, 0, 0, &[], &[]));
        assert!(e.contains("unsupported GGUF version 1"), "{e}");
        assert_eq!(GgufFile::from_bytes(raw(2, 0, 0, &[], &[]), "t").unwrap().version, 2);
        let e = err_of(raw(3u32.swap_bytes(), 0, 0, &[], &[]));
        assert!(e.contains("big-endian"), "{e}");
        // The minimal valid file: header only.
        let f = GgufFile::from_bytes(raw(3, 0, 0, &[], &[]), "t").unwrap();
        assert!(f.metadata.is_empty() && f.tensors.is_empty());
    }

    #[test]
    fn bad_tensor_infos() {
        // Data ends one byte short.
        let e = err_of(raw(3, 1, 0, &tensor_info("w", &[2], 0, 0), &[0; 7]));
        assert!(e.contains("tensor data out of bounds: 'w'"), "{e}");
        // Offset far beyond the file, and one that overflows u64.
        assert!(err_of(raw(3, 1, 0, &tensor_info("w", &[2], 0, 1 << 40), &[0; 8])).contains("out of bounds"));
        assert!(err_of(raw(3, 1, 0, &tensor_info("w", &[2], 0, u64::MAX - 31), &[0; 8])).contains("out of bounds"));
        // Huge dims: the element count overflows.
        let e = err_of(raw(3, 1, 0, &tensor_info("w", &[u64::MAX, 3], 0, 0), &[]));
        assert!(e.contains("overflows"), "{e}");
        let e = err_of(raw(3, 1, 0, &tensor_info("w", &[2], 0, 4), &[0; 64]));
        assert!(e.contains("not a multiple of the alignment 32"), "{e}");
        let e = err_of(raw(3, 1, 0, &tensor_info("w", &[2], 12, 0), &[0; 64]));
        assert!(e.contains("ggml type Q4_K (12)") && e.contains("Q8_0"), "a quantization is refused by name: {e}");
        let e = err_of(raw(3, 1, 0, &tensor_info("w", &[16], 8, 0), &[0; 64]));
        assert!(e.contains("multiple of 32"), "{e}");
        let e = err_of(raw(3, 1, 0, &tensor_info("w", &[1; 5], 0, 0), &[0; 64]));
        assert!(e.contains("5 dimensions"), "{e}");
        let mut two = tensor_info("w", &[1], 0, 0);
        two.extend(tensor_info("w", &[1], 0, 32));
        assert!(err_of(raw(3, 2, 0, &two, &[0; 64])).contains("duplicate tensor name 'w'"));
        // A huge tensor count with nothing behind it: an error, not an allocation.
        assert!(err_of(raw(3, u64::MAX, 0, &[], &[])).contains("truncated"));
    }

    #[test]
    fn bad_metadata() {
        let kv = |key: &str, ty: u32, payload: &[u8]| {
            let mut b = Vec::new();
            put_str(&mut b, key);
            put_u32(&mut b, ty);
            b.extend_from_slice(payload);
            b
        };
        let e = err_of(raw(3, 0, 1, &kv("k", 13, &[0; 8]), &[]));
        assert!(e.contains("metadata 'k': unknown value type 13"), "{e}");
        assert!(err_of(raw(3, 0, 1, &kv("k", 7, &[2]), &[])).contains("not 0 or 1"));
        let mut s = Vec::new();
        put_str(&mut s, "ok");
        let bad_utf8 = [2u8, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xfe];
        assert!(err_of(raw(3, 0, 1, &kv("k", 8, &bad_utf8), &[])).contains("not valid UTF-8"));
        let mut two = kv("k", 0, &[1]);
        two.extend(kv("k", 0, &[2]));
        assert!(err_of(raw(3, 0, 2, &two, &[])).contains("duplicate metadata key 'k'"));
        // Huge string length.
        let e = err_of(raw(3, 0, 1, &kv("k", 8, &u64::MAX.to_le_bytes()), &[]));
        assert!(e.contains("truncated"), "{e}");
        // Nested array.
        let mut nested = Vec::new();
        put_u32(&mut nested, 9);
        put_u64(&mut nested, 1);
        assert!(err_of(raw(3, 0, 1, &kv("k", 9, &nested), &[])).contains("nested arrays"));
        // Alignment must be a U32 power of two.
        assert!(err_of(raw(3, 0, 1, &kv(ALIGNMENT_KEY, 4, &24u32.to_le_bytes()), &[])).contains("power of two"));
        assert!(err_of(raw(3, 0, 1, &kv(ALIGNMENT_KEY, 10, &32u64.to_le_bytes()), &[])).contains("power of two"));
        // A huge metadata count with nothing behind it.
        assert!(err_of(raw(3, 0, u64::MAX, &[], &[])).contains("truncated"));
    }

    #[test]
    fn corrupt_huge_array_count_errors_without_allocating() {
        let mut w = GgufWriter::new();
        w.add_metadata("tokenizer.tokens", Value::from(vec!["a", "b", "c"])).unwrap();
        w.add_metadata("ids", Value::from(vec![1u8, 2, 3])).unwrap();
        let bytes = to_bytes(&w);
        // The count of the first array follows: 24-byte header, key, u32 type, u32 elem type.
        let at = 24 + 8 + "tokenizer.tokens".len() + 4 + 4;
        assert_eq!(&bytes[at..at + 8], &3u64.to_le_bytes());
        for huge in [u64::MAX, 1 << 40, u64::MAX / 8 + 1, 1_000_000] {
            let mut b = bytes.clone();
            b[at..at + 8].copy_from_slice(&huge.to_le_bytes());
            let e = err_of(b);
            assert!(e.contains(&format!("array of {huge} Str elements cannot fit")), "{e}");
        }
        let at2 = at + 8 + 3 * 9 + 8 + 3 + 4 + 4;
        assert_eq!(&bytes[at2..at2 + 8], &3u64.to_le_bytes());
        let mut b = bytes.clone();
        b[at2..at2 + 8].copy_from_slice(&(1u64 << 62).to_le_bytes());
        assert!(err_of(b).contains("U8 elements cannot fit"));
    }

    fn small_valid_file() -> Vec<u8> {
        let mut w = GgufWriter::new();
        w.add_metadata("general.architecture", Value::from("jarip")).unwrap();
        w.add_metadata("a.n", Value::U32(3)).unwrap();
        w.add_metadata("a.list", Value::from(vec!["x", "yz"])).unwrap();
        w.add_metadata("a.f", Value::from(vec![1.5f64])).unwrap();
        w.add_tensor_f32("w", &[2, 3], GgmlType::F16, &ramp(6, 0.1)).unwrap();
        w.add_tensor_f32("q", &[1, 32], GgmlType::Q8_0, &ramp(32, 0.1)).unwrap();
        w.add_tensor_f32("b", &[2], GgmlType::BF16, &[1.0, 2.0]).unwrap();
        to_bytes(&w)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Any byte mutation (or truncation) of a valid file parses or errors; it never panics,
        /// and whatever parses can be read in full.
        #[test]
        fn mutated_files_never_panic(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
            cut in proptest::option::of(any::<prop::sample::Index>()),
        ) {
            let mut b = small_valid_file();
            for (i, v) in edits {
                let i = i.index(b.len());
                b[i] = v;
            }
            if let Some(c) = cut {
                b.truncate(c.index(b.len()));
            }
            if let Ok(f) = GgufFile::from_bytes(b, "mutant") {
                for t in f.tensors.clone() {
                    let v = f.tensor_f32(&t.name).unwrap();
                    prop_assert_eq!(v.len() as u64, t.n_elements());
                }
                for (k, _) in &f.metadata {
                    prop_assert!(f.get(k).is_some());
                }
            }
        }
    }
}
