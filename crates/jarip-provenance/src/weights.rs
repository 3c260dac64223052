//! Streaming, bounded-memory access to a model's safetensors weights, for comparing models far
//! larger than memory (7B–100B parameters on a 24 GB machine).
//!
//! This module owns resolving a model path to its weight files ([`WeightSource::open`]), parsing
//! and validating their safetensors headers, and reading tensors, or row ranges of them, on
//! demand with `pread`, converted to f32. Only headers and file handles are kept: nothing
//! proportional to the model stays in memory, and no buffer is sized from a header before the
//! header has been checked against the real file size (a tampered or truncated file fails at
//! open, naming the file and the tensor).
//!
//! Paths it accepts: one `.safetensors` file; a directory with `model.safetensors.index.json`
//! (exactly the shards it names); a directory of `*.safetensors` files (files named `optim*`,
//! optimizer state in jarip checkpoints, are skipped); a jarip run directory (its selected or newest
//! `ckpt-*`); one `.gguf` file (llama.cpp's; F32, F16, BF16 and Q8_0 tensors, named as HF names
//! them, the `llama` architecture's pairwise q/k rows read back in the halves order of HF and
//! jarip). Pickled weights (`.bin`, `.pt`, `.pth`, `.ckpt`, `.pkl`) are refused, since loading
//! them can run code.
//!
//! Only floating-point tensors are weights (F64, F32, F16, BF16, F8_E4M3, F8_E5M2); integer and
//! bool tensors are skipped. FP8 weights are dequantised with their scale: DeepSeek-V3 block
//! scales (`NAME_scale_inv`, 2-D, one value per block) or compressed-tensors scales (`.weight`
//! → `.weight_scale`, per tensor or per output row). An FP8 weight without a scale tensor is read
//! with scale 1. Scale tensors (`*_scale_inv`, `*.weight_scale`, `*.input_scale`) are not listed
//! by [`WeightSource::names`] but can still be looked up with [`WeightSource::info`].

use anyhow::{anyhow, bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// Largest safetensors header accepted (the format's own limit).
const MAX_HEADER: u64 = 100 << 20;
/// Largest JSON index accepted.
const MAX_INDEX: u64 = 100 << 20;
/// Bytes read per `pread` when a read spans many rows (bounds the staging buffer).
const CHUNK_BYTES: usize = 8 << 20;
/// Extensions of pickled PyTorch / Lightning weights, refused because loading them can run code.
const PICKLE_EXTS: [&str; 5] = ["bin", "pt", "pth", "ckpt", "pkl"];
const INDEX_NAME: &str = "model.safetensors.index.json";

/// Floating-point dtypes of weight tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WDtype {
    F64,
    F32,
    F16,
    BF16,
    F8E4M3,
    F8E5M2,
    /// llama.cpp's 8-bit blocks (32 values and an f16 scale in 34 bytes), from GGUF files.
    Q8_0,
}

impl WDtype {
    /// The dtype for a safetensors dtype string; `None` for non-float dtypes (I64, U8, BOOL…).
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "F64" => Self::F64,
            "F32" => Self::F32,
            "F16" => Self::F16,
            "BF16" => Self::BF16,
            "F8_E4M3" => Self::F8E4M3,
            "F8_E5M2" => Self::F8E5M2,
            _ => return None,
        })
    }

    /// Bytes per element (Q8_0: rounded up; see [`WDtype::row_bytes`]).
    pub fn size(self) -> usize {
        match self {
            Self::F64 => 8,
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::F8E4M3 | Self::F8E5M2 | Self::Q8_0 => 1,
        }
    }

    /// Bytes of a row of `len` values (a Q8_0 row is whole blocks).
    pub fn row_bytes(self, len: usize) -> usize {
        match self {
            Self::Q8_0 => len / 32 * 34,
            _ => len * self.size(),
        }
    }

    pub fn is_fp8(self) -> bool {
        matches!(self, Self::F8E4M3 | Self::F8E5M2)
    }
}

/// Size in bytes of a non-float safetensors dtype, to bounds-check tensors that are skipped.
fn other_dtype_size(s: &str) -> Option<u64> {
    Some(match s {
        "BOOL" | "U8" | "I8" | "F8_E8M0" => 1,
        "U16" | "I16" => 2,
        "U32" | "I32" => 4,
        "U64" | "I64" | "C64" => 8,
        _ => return None,
    })
}

/// Where a tensor lies and what it holds, from a validated header.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: WDtype,
    pub shape: Vec<usize>,
    /// Index into [`WeightSource::files`].
    pub file: usize,
    /// Absolute byte offset of the tensor's data in its file.
    pub offset: u64,
    /// Bytes of data.
    pub len: u64,
    /// `Some((heads, head_dim))`: the rows are stored per head in llama.cpp's pairwise rotary
    /// order and are read back in the halves order (a GGUF file of the `llama` architecture).
    pub pairs: Option<(usize, usize)>,
}

impl TensorInfo {
    /// `shape[0]`, or 1 for a scalar.
    pub fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(1)
    }
    /// Product of `shape[1..]`, at least 1.
    pub fn cols(&self) -> usize {
        self.shape.iter().skip(1).product::<usize>().max(1)
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// The stored row holding logical row `r` (see [`TensorInfo::pairs`]).
    fn stored_row(&self, r: usize) -> usize {
        match self.pairs {
            None => r,
            Some((_, d)) => {
                let (h, k, half) = (r / d, r % d, d / 2);
                h * d + 2 * (k % half) + k / half
            }
        }
    }

    /// Values per row as stored (0 for an empty tensor, unlike [`cols`](Self::cols)).
    fn row_len(&self) -> usize {
        match self.rows() {
            0 => 0,
            r => self.numel() / r,
        }
    }
}

/// Whether a tensor name is a quantisation scale rather than a weight.
fn is_scale_name(name: &str) -> bool {
    name.ends_with("_scale_inv") || name.ends_with(".weight_scale") || name.ends_with(".input_scale")
}

/// A model's weights on disk: validated headers and open files, read on demand.
pub struct WeightSource {
    /// Directory holding the weights.
    pub dir: PathBuf,
    /// The safetensors files read, in the order [`TensorInfo::file`] indexes.
    pub files: Vec<PathBuf>,
    /// `tokenizer.json` that goes with the weights, if one was found.
    pub tokenizer: Option<PathBuf>,
    /// `config.json` beside the weights, if any.
    pub config: Option<PathBuf>,
    handles: Vec<File>,
    tensors: BTreeMap<String, TensorInfo>,
    read: Arc<AtomicU64>,
    weight_bytes: u64,
    num_params: u64,
}

/// How a scale applies to an FP8 weight.
enum Scale<'a> {
    One,
    /// DeepSeek-V3 `_scale_inv`: one value per `br × bc` block.
    Block {
        t: &'a TensorInfo,
        br: usize,
        bc: usize,
    },
    /// compressed-tensors `.weight_scale`, one value.
    PerTensor(&'a TensorInfo),
    /// compressed-tensors `.weight_scale`, one value per output row.
    PerRow(&'a TensorInfo),
}

impl WeightSource {
    /// Resolves `path` to its weight files and reads and validates their headers (see the module
    /// doc for the paths accepted).
    pub fn open(path: &Path) -> Result<Self> {
        let (dir, layout) = resolve(path)?;
        let mut files: Vec<PathBuf> = Vec::new();
        let mut handles = Vec::new();
        let mut tensors: BTreeMap<String, TensorInfo> = BTreeMap::new();
        let mut add_file = |file: &Path, tensors: &mut BTreeMap<String, TensorInfo>| -> Result<BTreeSet<String>> {
            let idx = files.len();
            let handle = File::open(file).with_context(|| format!("{}: cannot open", file.display()))?;
            let (infos, all) = parse_header(&handle, file, idx)?;
            for t in infos {
                if let Some(prev) = tensors.get(&t.name) {
                    bail!("tensor {} is in both {} and {}", t.name, files[prev.file].display(), file.display());
                }
                tensors.insert(t.name.clone(), t);
            }
            files.push(file.to_path_buf());
            handles.push(handle);
            Ok(all)
        };
        match layout {
            Layout::Files(list) => {
                for f in &list {
                    add_file(f, &mut tensors)?;
                }
            }
            Layout::Gguf(file) => {
                let handle = File::open(&file).with_context(|| format!("{}: cannot open", file.display()))?;
                for t in gguf_tensors(&file, 0)? {
                    if tensors.insert(t.name.clone(), t).is_some() {
                        bail!("{}: a tensor name appears twice", file.display());
                    }
                }
                files.push(file);
                handles.push(handle);
            }
            Layout::Index(index) => {
                let map = read_index(&index)?;
                let mut by_shard: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
                for (t, s) in &map {
                    by_shard.entry(s.as_str()).or_default().push(t.as_str());
                }
                for (shard, names) in by_shard {
                    let file = dir.join(shard);
                    if !file.is_file() {
                        bail!("{}: shard {} (holding tensor {}) is missing", index.display(), file.display(), names[0]);
                    }
                    let all = add_file(&file, &mut tensors)?;
                    if let Some(t) = names.iter().find(|t| !all.contains(**t)) {
                        bail!("{}: maps tensor {t} to {}, which lacks it", index.display(), file.display());
                    }
                }
            }
        }
        let tokenizer = crate::tensors::find_near(&dir, "tokenizer.json", 3);
        let config = Some(dir.join("config.json")).filter(|p| p.is_file());
        let mut src = Self {
            dir,
            files,
            tokenizer,
            config,
            handles,
            tensors,
            read: Arc::new(AtomicU64::new(0)),
            weight_bytes: 0,
            num_params: 0,
        };
        for t in src.tensors.values().filter(|t| !is_scale_name(&t.name)) {
            src.weight_bytes += t.len;
            src.num_params += t.numel() as u64;
            // Fail at open, not mid-comparison, on an FP8 scale that does not fit its weight.
            src.scale_for(t)?;
        }
        Ok(src)
    }

    /// Weight tensor names, sorted (FP8 scale tensors excluded).
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.tensors.keys().map(String::as_str).filter(|n| !is_scale_name(n))
    }

    /// Where a tensor (weight or scale) lies and what it holds.
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }

    /// Rows `rows` of a tensor, row-major, `rows.len() × cols` values, dequantised if FP8.
    pub fn read_rows(&self, name: &str, rows: Range<usize>) -> Result<Vec<f32>> {
        let t = self.get(name)?;
        if rows.start > rows.end || rows.end > t.rows() {
            bail!(
                "{}: tensor {name}: rows {}..{} out of range (it has {} rows)",
                self.files[t.file].display(),
                rows.start,
                rows.end,
                t.rows()
            );
        }
        if t.pairs.is_some() {
            return self.read_row_list(name, &rows.collect::<Vec<_>>());
        }
        let mut out = Vec::with_capacity(rows.len() * t.row_len());
        self.read_into(t, rows, &mut out)?;
        Ok(out)
    }

    /// A whole tensor, dequantised if FP8 (allocates that tensor only).
    pub fn read(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.get(name)?;
        self.read_rows(name, 0..t.rows())
    }

    /// Rows gathered in the given order (repeats allowed); adjacent row numbers are read with
    /// one `pread`, whatever their order in `rows`.
    pub fn read_row_list(&self, name: &str, rows: &[usize]) -> Result<Vec<f32>> {
        let t = self.get(name)?;
        let file = &self.files[t.file];
        if let Some(&bad) = rows.iter().find(|&&r| r >= t.rows()) {
            bail!("{}: tensor {name}: row {bad} out of range (it has {} rows)", file.display(), t.rows());
        }
        let rl = t.row_len();
        let total =
            rows.len().checked_mul(rl).ok_or_else(|| anyhow!("{}: tensor {name}: too many rows", file.display()))?;
        let mut out = vec![0f32; total];
        if rl == 0 {
            return Ok(out);
        }
        let max_run = (CHUNK_BYTES / t.dtype.row_bytes(rl).max(1)).max(1);
        let mut order: Vec<(usize, usize)> = rows.iter().enumerate().map(|(pos, &r)| (t.stored_row(r), pos)).collect();
        order.sort_unstable();
        let mut tmp = Vec::new();
        let mut i = 0;
        while i < order.len() {
            let start = order[i].0;
            let mut end = start + 1;
            let mut j = i + 1;
            while j < order.len() {
                let r = order[j].0;
                if r == end - 1 {
                    j += 1;
                } else if r == end && end - start < max_run {
                    end += 1;
                    j += 1;
                } else {
                    break;
                }
            }
            tmp.clear();
            self.read_into(t, start..end, &mut tmp)?;
            for &(r, pos) in &order[i..j] {
                let src = (r - start) * rl;
                out[pos * rl..(pos + 1) * rl].copy_from_slice(&tmp[src..src + rl]);
            }
            i = j;
        }
        Ok(out)
    }

    /// Bytes of tensor data `pread` so far (scale tensors included), for a progress bar.
    pub fn bytes_read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    /// The counter behind [`bytes_read`](Self::bytes_read), to watch from another thread.
    pub fn progress_counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.read)
    }

    /// Bytes of all weight tensors: what one full pass reads.
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }

    /// Elements of all weight tensors.
    pub fn num_params(&self) -> u64 {
        self.num_params
    }

    fn get(&self, name: &str) -> Result<&TensorInfo> {
        self.tensors.get(name).ok_or_else(|| anyhow!("{}: no tensor {name}", self.dir.display()))
    }

    /// Appends rows `rows` (already bounds-checked) of `t`, converted, scaled and checked finite.
    fn read_into(&self, t: &TensorInfo, rows: Range<usize>, out: &mut Vec<f32>) -> Result<()> {
        let file = &self.files[t.file];
        let rl = t.row_len();
        let row_bytes = t.dtype.row_bytes(rl);
        let base = out.len();
        if row_bytes > 0 && !rows.is_empty() {
            let chunk_rows = (CHUNK_BYTES / row_bytes).max(1).min(rows.len());
            let mut buf = vec![0u8; chunk_rows * row_bytes];
            let mut r = rows.start;
            while r < rows.end {
                let n = chunk_rows.min(rows.end - r);
                let bytes = &mut buf[..n * row_bytes];
                let at = t.offset + (r * row_bytes) as u64;
                self.handles[t.file].read_exact_at(bytes, at).with_context(|| {
                    format!(
                        "{}: tensor {}: cannot read {} bytes at offset {at} (file changed since open?)",
                        file.display(),
                        t.name,
                        bytes.len()
                    )
                })?;
                self.read.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                convert(t.dtype, bytes, out);
                r += n;
            }
        }
        let vals = &mut out[base..];
        self.apply_scale(t, rows.clone(), vals)?;
        if let Some(i) = vals.iter().position(|v| !v.is_finite()) {
            bail!(
                "{}: tensor {} holds non-finite values (NaN/inf) at row {}",
                file.display(),
                t.name,
                rows.start + i / rl.max(1)
            );
        }
        Ok(())
    }

    /// The scale that dequantises FP8 weight `t`, its shape checked against the weight's.
    fn scale_for(&self, t: &TensorInfo) -> Result<Scale<'_>> {
        if !t.dtype.is_fp8() {
            return Ok(Scale::One);
        }
        let file = &self.files[t.file];
        let check_dtype = |s: &TensorInfo| -> Result<()> {
            if s.dtype.is_fp8() {
                bail!("{}: scale {} of tensor {} is itself FP8", self.files[s.file].display(), s.name, t.name);
            }
            Ok(())
        };
        let (r, c) = (t.rows(), t.cols());
        if let Some(s) = self.tensors.get(&format!("{}_scale_inv", t.name)) {
            check_dtype(s)?;
            let (s0, s1) = (s.rows(), s.cols());
            let consistent = s.shape.len() == 2 && s0 > 0 && s1 > 0 && {
                let (br, bc) = (r.div_ceil(s0), c.div_ceil(s1));
                br > 0 && bc > 0 && r.div_ceil(br) == s0 && c.div_ceil(bc) == s1
            };
            if !consistent {
                bail!(
                    "{}: tensor {}: block scale {} has shape {:?}, which does not tile a {r}×{c} weight",
                    file.display(),
                    t.name,
                    s.name,
                    s.shape
                );
            }
            return Ok(Scale::Block { t: s, br: r.div_ceil(s0), bc: c.div_ceil(s1) });
        }
        if let Some(stem) = t.name.strip_suffix(".weight") {
            if let Some(s) = self.tensors.get(&format!("{stem}.weight_scale")) {
                check_dtype(s)?;
                if s.numel() == 1 {
                    return Ok(Scale::PerTensor(s));
                }
                if s.rows() == r && s.numel() == r && s.shape.len() <= 2 {
                    return Ok(Scale::PerRow(s));
                }
                bail!(
                    "{}: tensor {}: scale {} has shape {:?}; expected [], [1], [{r}] or [{r}, 1]",
                    file.display(),
                    t.name,
                    s.name,
                    s.shape
                );
            }
        }
        Ok(Scale::One)
    }

    /// Multiplies `vals` (rows `rows` of `t`) by the FP8 scale of `t`, if any.
    fn apply_scale(&self, t: &TensorInfo, rows: Range<usize>, vals: &mut [f32]) -> Result<()> {
        if vals.is_empty() {
            return Ok(());
        }
        let rl = t.row_len();
        match self.scale_for(t)? {
            Scale::One => {}
            Scale::PerTensor(s) => {
                let mut sv = Vec::with_capacity(1);
                self.read_into(s, 0..s.rows(), &mut sv)?;
                vals.iter_mut().for_each(|v| *v *= sv[0]);
            }
            Scale::PerRow(s) => {
                let mut sv = Vec::with_capacity(rows.len());
                self.read_into(s, rows, &mut sv)?;
                for (row, k) in vals.chunks_exact_mut(rl).zip(sv) {
                    row.iter_mut().for_each(|v| *v *= k);
                }
            }
            Scale::Block { t: s, br, bc } => {
                let first = rows.start / br;
                let last = (rows.end - 1) / br;
                let s1 = s.cols();
                let mut sv = Vec::with_capacity((last - first + 1) * s1);
                self.read_into(s, first..last + 1, &mut sv)?;
                for (i, row) in vals.chunks_exact_mut(rl).enumerate() {
                    let srow = &sv[((rows.start + i) / br - first) * s1..][..s1];
                    for (j, v) in row.iter_mut().enumerate() {
                        *v *= srow[j / bc];
                    }
                }
            }
        }
        Ok(())
    }
}

/// Appends `bytes` of `dtype`, converted to f32.
fn convert(dtype: WDtype, bytes: &[u8], out: &mut Vec<f32>) {
    match dtype {
        WDtype::F32 => out.extend(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        WDtype::F64 => out.extend(
            bytes.chunks_exact(8).map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32),
        ),
        WDtype::F16 => out.extend(bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())),
        WDtype::BF16 => out.extend(bytes.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())),
        WDtype::F8E4M3 => {
            let lut = fp8_table(WDtype::F8E4M3);
            out.extend(bytes.iter().map(|&b| lut[b as usize]))
        }
        WDtype::F8E5M2 => {
            let lut = fp8_table(WDtype::F8E5M2);
            out.extend(bytes.iter().map(|&b| lut[b as usize]))
        }
        WDtype::Q8_0 => {
            for block in bytes.chunks_exact(34) {
                let d = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
                out.extend(block[2..].iter().map(|&q| q as i8 as f32 * d));
            }
        }
    }
}

/// 2^k, exactly, for k in the normal f32 range.
fn pow2(k: i32) -> f32 {
    f32::from_bits(((k + 127) as u32) << 23)
}

/// FP8 E4M3 (the "fn" variant: no infinities, NaN = 0x7f/0xff, bias 7, subnormals), exactly.
fn e4m3_to_f32(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let (e, m) = (((b >> 3) & 0x0f) as i32, (b & 0x07) as f32);
    let mag = match e {
        15 if m == 7.0 => f32::NAN,
        0 => m * pow2(-9),
        _ => (8.0 + m) * pow2(e - 10),
    };
    sign * mag
}

/// FP8 E5M2 (IEEE-like: bias 15, subnormals, infinities and NaN), exactly.
fn e5m2_to_f32(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let (e, m) = (((b >> 2) & 0x1f) as i32, (b & 0x03) as f32);
    let mag = match e {
        31 if m == 0.0 => f32::INFINITY,
        31 => f32::NAN,
        0 => m * pow2(-16),
        _ => (4.0 + m) * pow2(e - 17),
    };
    sign * mag
}

fn fp8_table(dtype: WDtype) -> &'static [f32; 256] {
    static E4M3: OnceLock<[f32; 256]> = OnceLock::new();
    static E5M2: OnceLock<[f32; 256]> = OnceLock::new();
    let (cell, f): (_, fn(u8) -> f32) =
        if dtype == WDtype::F8E4M3 { (&E4M3, e4m3_to_f32) } else { (&E5M2, e5m2_to_f32) };
    cell.get_or_init(|| std::array::from_fn(|i| f(i as u8)))
}

/// Reads and validates one file's header: the float tensors as [`TensorInfo`], and the names of
/// all tensors (skipped non-float ones included).
fn parse_header(handle: &File, file: &Path, idx: usize) -> Result<(Vec<TensorInfo>, BTreeSet<String>)> {
    let fd = file.display();
    let size = handle.metadata().with_context(|| format!("{fd}: cannot stat"))?.len();
    let mut len8 = [0u8; 8];
    if size < 8 {
        bail!("{fd}: not a safetensors file ({size} bytes, shorter than the 8-byte header length)");
    }
    handle.read_exact_at(&mut len8, 0).with_context(|| format!("{fd}: cannot read the header length"))?;
    let n = u64::from_le_bytes(len8);
    if n > MAX_HEADER {
        bail!("{fd}: header length {n} exceeds the 100 MiB limit (not a safetensors file?)");
    }
    if n + 8 > size {
        bail!("{fd}: header length {n} exceeds the file size ({size} bytes)");
    }
    let mut header = vec![0u8; n as usize];
    handle.read_exact_at(&mut header, 8).with_context(|| format!("{fd}: cannot read the {n}-byte header"))?;
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).with_context(|| format!("{fd}: header is not a JSON object"))?;
    let data_start = 8 + n;
    let mut infos = Vec::new();
    let mut all = BTreeSet::new();
    for (name, v) in map {
        if name == "__metadata__" {
            continue;
        }
        let bad = |what: &str| anyhow!("{fd}: tensor {name}: {what}");
        let dtype_s = v.get("dtype").and_then(|d| d.as_str()).ok_or_else(|| bad("no dtype"))?;
        let shape: Vec<u64> = v
            .get("shape")
            .and_then(|s| s.as_array())
            .and_then(|a| a.iter().map(|d| d.as_u64()).collect())
            .ok_or_else(|| bad("shape is not a list of non-negative integers"))?;
        let offs: Vec<u64> = v
            .get("data_offsets")
            .and_then(|s| s.as_array())
            .and_then(|a| a.iter().map(|d| d.as_u64()).collect())
            .filter(|o: &Vec<u64>| o.len() == 2)
            .ok_or_else(|| bad("data_offsets is not [begin, end]"))?;
        let (b, e) = (offs[0], offs[1]);
        if b > e {
            return Err(bad(&format!("data offsets [{b}, {e}] begin after they end")));
        }
        if data_start.checked_add(e).is_none_or(|end| end > size) {
            return Err(bad(&format!("data offsets [{b}, {e}] run past the end of the file (size {size})")));
        }
        let dtype = WDtype::parse(dtype_s);
        let elem = match dtype {
            Some(d) => Some(d.size() as u64),
            None => other_dtype_size(dtype_s),
        };
        let numel = shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
        if let Some(elem) = elem {
            let claimed = numel.and_then(|k| k.checked_mul(elem));
            if claimed != Some(e - b) {
                let claim = claimed.map_or("more than 2^64".to_string(), |c| c.to_string());
                return Err(bad(&format!(
                    "header claims shape {shape:?} of {dtype_s} = {claim} bytes, but data offsets [{b}, {e}] hold {} bytes",
                    e - b
                )));
            }
        }
        all.insert(name.clone());
        let Some(dtype) = dtype else { continue };
        let shape: Vec<usize> = shape
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| bad("shape does not fit this machine's address space"))?;
        infos.push(TensorInfo { name, dtype, shape, file: idx, offset: data_start + b, len: e - b, pairs: None });
    }
    Ok((infos, all))
}

/// What a model path resolves to.
enum Layout {
    Files(Vec<PathBuf>),
    Index(PathBuf),
    Gguf(PathBuf),
}

fn ext_lower(p: &Path) -> String {
    p.extension().map(|x| x.to_string_lossy().to_ascii_lowercase()).unwrap_or_default()
}

fn is_pickle(p: &Path) -> bool {
    PICKLE_EXTS.contains(&ext_lower(p).as_str())
}

fn is_weights_file(p: &Path) -> bool {
    ext_lower(p) == "safetensors" && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("optim"))
}

fn pickle_refusal(path: &Path, found: &str) -> anyhow::Error {
    anyhow!(
        "{}: {found} is a pickle format, refused because loading it can run code; convert it to safetensors",
        path.display()
    )
}

fn gguf_refusal(path: &Path, found: &str) -> anyhow::Error {
    anyhow!("{}: {found} is GGUF: name the .gguf file itself", path.display())
}

/// The tensors of a GGUF file (validated by [`jarip_interop::gguf::GgufFile`]: offsets and sizes
/// within the file) under HF names; a `llama` file's q/k projections marked as stored in pairs.
fn gguf_tensors(path: &Path, idx: usize) -> Result<Vec<TensorInfo>> {
    use jarip_interop::gguf::{GgmlType, GgufFile, Value};
    let f = GgufFile::open(path)?;
    let arch = f.get("general.architecture").and_then(Value::as_str).unwrap_or("").to_string();
    let int = |k: &str| f.get(&format!("{arch}.{k}")).and_then(Value::as_u64).map(|v| v as usize);
    let heads = int("attention.head_count");
    let kv_heads = int("attention.head_count_kv").or(heads);
    // The head width: key_length where the file states it (it may differ from width / heads).
    let head_dim = int("attention.key_length").or_else(|| Some(int("embedding_length")? / heads.filter(|&h| h > 0)?));
    let mut out = Vec::new();
    for t in &f.tensors {
        let name = jarip_model::layout::hf_name_of_gguf(&t.name).unwrap_or_else(|| t.name.clone());
        let dtype = match t.ty {
            GgmlType::F32 => WDtype::F32,
            GgmlType::F16 => WDtype::F16,
            GgmlType::BF16 => WDtype::BF16,
            GgmlType::Q8_0 => WDtype::Q8_0,
        };
        let pairs = match (arch.as_str(), heads, kv_heads, head_dim) {
            ("llama", Some(h), Some(hkv), Some(d)) if d > 0 => {
                if name.ends_with("self_attn.q_proj.weight") {
                    Some((h, d))
                } else if name.ends_with("self_attn.k_proj.weight") {
                    Some((hkv, d))
                } else {
                    None
                }
            }
            _ => None,
        };
        let shape = t.shape();
        if let Some((h, d)) = pairs {
            if shape.first() != Some(&(h * d)) || d % 2 != 0 {
                bail!("{}: tensor {} has {:?} rows for {h} heads of {d}", path.display(), t.name, shape.first());
            }
        }
        out.push(TensorInfo {
            name,
            dtype,
            shape,
            file: idx,
            offset: f.data_offset + t.offset,
            len: t.byte_len(),
            pairs,
        });
    }
    Ok(out)
}

/// The weights directory and files a model path names.
fn resolve(path: &Path) -> Result<(PathBuf, Layout)> {
    resolve_at(path, false)
}

/// [`resolve`], descending into a run's model (selected, else newest `ckpt-*`) only when not `nested` already.
fn resolve_at(path: &Path, nested: bool) -> Result<(PathBuf, Layout)> {
    if !path.exists() {
        bail!("{}: no such model directory or file", path.display());
    }
    if path.is_file() {
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
        let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        return match ext_lower(path).as_str() {
            "safetensors" => Ok((dir, Layout::Files(vec![path.to_path_buf()]))),
            "json" if name.ends_with(".safetensors.index.json") => Ok((dir, Layout::Index(path.to_path_buf()))),
            "gguf" => Ok((dir, Layout::Gguf(path.to_path_buf()))),
            _ if is_pickle(path) => Err(pickle_refusal(path, "the file")),
            _ => bail!("{}: not a .safetensors file (only safetensors weights are read)", path.display()),
        };
    }
    let index = path.join(INDEX_NAME);
    if index.is_file() {
        return Ok((path.to_path_buf(), Layout::Index(index)));
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("{}: cannot list the directory", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    let files: Vec<PathBuf> = entries.iter().filter(|p| p.is_file() && is_weights_file(p)).cloned().collect();
    if !files.is_empty() {
        return Ok((path.to_path_buf(), Layout::Files(files)));
    }
    // A run directory: the checkpoint every other command would use (its selected one, else
    // its newest).
    let model = if nested { None } else { jarip_ledger::run_dir::model_of_run(path)? };
    if let Some(ckpt) = model {
        // One level only: a checkpoint holds weights, not further checkpoints (and a `ckpt-1 -> .`
        // link must not recurse).
        return resolve_at(&ckpt, true);
    }
    let names = |keep: &dyn Fn(&Path) -> bool| -> Vec<String> {
        entries
            .iter()
            .filter(|p| p.is_file() && keep(p))
            .map(|p| p.file_name().unwrap_or_default().to_string_lossy().to_string())
            .collect()
    };
    let pickles = names(&is_pickle);
    if !pickles.is_empty() {
        return Err(pickle_refusal(path, &pickles.join(", ")));
    }
    let ggufs = names(&|p: &Path| ext_lower(p) == "gguf");
    if !ggufs.is_empty() {
        return Err(gguf_refusal(path, &ggufs.join(", ")));
    }
    bail!("{}: no .safetensors files and no ckpt-* checkpoints", path.display())
}

/// The `weight_map` of an HF index: tensor name → shard file name (a plain relative path).
fn read_index(index: &Path) -> Result<BTreeMap<String, String>> {
    let id = index.display();
    let size = std::fs::metadata(index).with_context(|| format!("{id}: cannot stat"))?.len();
    if size > MAX_INDEX {
        bail!("{id}: index of {size} bytes exceeds the 100 MiB limit");
    }
    let text = std::fs::read(index).with_context(|| format!("{id}: cannot read"))?;
    let v: serde_json::Value = serde_json::from_slice(&text).with_context(|| format!("{id}: not valid JSON"))?;
    let wm = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| anyhow!("{id}: no weight_map object"))?;
    let mut out = BTreeMap::new();
    for (t, s) in wm {
        let s = s.as_str().ok_or_else(|| anyhow!("{id}: tensor {t}: shard is not a string"))?;
        let p = Path::new(s);
        if s.is_empty() || !p.components().all(|c| matches!(c, std::path::Component::Normal(_))) {
            bail!("{id}: tensor {t}: shard {s:?} is not a file name inside the model directory");
        }
        if is_pickle(p) {
            return Err(pickle_refusal(index, s));
        }
        out.insert(t.clone(), s.to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    /// A safetensors file from a raw header (JSON text) and data.
    fn st_raw(header: &str, data: &[u8]) -> Vec<u8> {
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    /// A well-formed safetensors file: (name, dtype, shape, data bytes), laid out in order.
    fn st(entries: &[(&str, &str, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
        let mut header = serde_json::Map::new();
        header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
        let mut data = Vec::new();
        for (name, dtype, shape, bytes) in entries {
            let b = data.len();
            data.extend_from_slice(bytes);
            header.insert(
                name.to_string(),
                serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [b, data.len()]}),
            );
        }
        st_raw(&serde_json::Value::Object(header).to_string(), &data)
    }

    fn f32b(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }
    fn bf16b(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|&x| bf16::from_f32(x).to_le_bytes()).collect()
    }
    fn f16b(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect()
    }
    fn seq(n: usize) -> Vec<f32> {
        (0..n).map(|i| i as f32 * 0.5 - 3.0).collect()
    }
    fn write(path: &Path, bytes: &[u8]) {
        std::fs::write(path, bytes).unwrap();
    }
    fn err_of(path: &Path) -> String {
        match WeightSource::open(path) {
            Ok(_) => panic!("{} opened but should not", path.display()),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn single_file_roundtrip_f32_bf16_f16() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("model.safetensors");
        let v = seq(24);
        write(
            &p,
            &st(&[
                ("a.weight", "F32", vec![6, 4], f32b(&v)),
                ("b.weight", "BF16", vec![4, 6], bf16b(&v)),
                ("c.weight", "F16", vec![2, 3, 4], f16b(&v)),
                ("d.f64", "F64", vec![3], [1.5f64, -2.0, 0.25].iter().flat_map(|x| x.to_le_bytes()).collect()),
                ("ids", "I64", vec![2], vec![0u8; 16]),
            ]),
        );
        std::fs::write(d.path().join("config.json"), "{}").unwrap();
        let ws = WeightSource::open(&p).unwrap();
        assert_eq!(ws.names().collect::<Vec<_>>(), ["a.weight", "b.weight", "c.weight", "d.f64"]);
        assert_eq!(ws.read("a.weight").unwrap(), v);
        assert_eq!(ws.read("b.weight").unwrap(), v); // halves of small integers are exact
        assert_eq!(ws.read("c.weight").unwrap(), v);
        assert_eq!(ws.read("d.f64").unwrap(), [1.5, -2.0, 0.25]);
        assert!(ws.info("ids").is_none());
        let c = ws.info("c.weight").unwrap();
        assert_eq!((c.rows(), c.cols(), c.numel()), (2, 12, 24));
        assert_eq!(ws.config.as_deref(), Some(d.path().join("config.json").as_path()));
        assert_eq!(ws.bytes_read(), 24 * 4 + 24 * 2 + 24 * 2 + 24);
    }

    #[test]
    fn read_rows_and_row_list_match_the_whole() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.safetensors");
        let v = seq(40);
        write(&p, &st(&[("w", "BF16", vec![10, 4], bf16b(&v))]));
        let ws = WeightSource::open(&p).unwrap();
        let all = ws.read("w").unwrap();
        assert_eq!(ws.read_rows("w", 3..7).unwrap(), all[12..28]);
        assert!(ws.read_rows("w", 3..3).unwrap().is_empty());
        let rows = [7, 2, 3, 9, 7, 0, 1];
        let got = ws.read_row_list("w", &rows).unwrap();
        let want: Vec<f32> = rows.iter().flat_map(|&r| all[r * 4..r * 4 + 4].to_vec()).collect();
        assert_eq!(got, want);
        let e = format!("{:#}", ws.read_rows("w", 8..11).unwrap_err());
        assert!(e.contains("m.safetensors") && e.contains("tensor w"), "{e}");
        assert!(ws.read_row_list("w", &[10]).is_err());
        assert!(ws.read("nope").is_err());
    }

    #[test]
    fn sharded_index_two_shards() {
        let d = tempfile::tempdir().unwrap();
        let s1 = "model-00001-of-00002.safetensors";
        let s2 = "model-00002-of-00002.safetensors";
        write(
            &d.path().join(s1),
            &st(&[("x.a", "F32", vec![2, 3], f32b(&seq(6))), ("x.b", "BF16", vec![4], bf16b(&seq(4)))]),
        );
        write(&d.path().join(s2), &st(&[("y.a", "F16", vec![5, 2], f16b(&seq(10)))]));
        // a stray shard the index does not name is not read
        write(&d.path().join("model.safetensors"), &st(&[("stray", "F32", vec![1], f32b(&[1.0]))]));
        let index =
            serde_json::json!({"metadata": {"total_size": 52}, "weight_map": {"x.a": s1, "x.b": s1, "y.a": s2}});
        std::fs::write(d.path().join(INDEX_NAME), index.to_string()).unwrap();
        std::fs::create_dir(d.path().join("tokenizer")).unwrap();
        std::fs::write(d.path().join("tokenizer/tokenizer.json"), "{}").unwrap();
        let ws = WeightSource::open(d.path()).unwrap();
        assert_eq!(ws.names().collect::<Vec<_>>(), ["x.a", "x.b", "y.a"]);
        assert_eq!(ws.files.len(), 2);
        assert_eq!(ws.weight_bytes(), 24 + 8 + 20);
        assert_eq!(ws.num_params(), 6 + 4 + 10);
        assert_eq!(ws.read("y.a").unwrap(), seq(10));
        assert_eq!(ws.info("y.a").unwrap().file, 1);
        assert!(ws.tokenizer.is_some());
        let counter = ws.progress_counter();
        let before = counter.load(Ordering::Relaxed);
        for n in ws.names().map(String::from).collect::<Vec<_>>() {
            ws.read(&n).unwrap();
        }
        assert_eq!(counter.load(Ordering::Relaxed) - before, ws.weight_bytes());
    }

    #[test]
    fn fp8_decode_tables() {
        for (b, want) in [
            (0x38u8, 1.0f32),
            (0x7e, 448.0),
            (0x01, pow2(-9)),
            (0x07, 7.0 * pow2(-9)),
            (0x08, pow2(-6)),
            (0x00, 0.0),
            (0xb8, -1.0),
            (0x40, 2.0),
            (0x3c, 1.5),
            (0xfe, -448.0),
        ] {
            assert_eq!(e4m3_to_f32(b), want, "E4M3 {b:#04x}");
        }
        assert!(e4m3_to_f32(0x7f).is_nan() && e4m3_to_f32(0xff).is_nan());
        assert!((0..=255u8).filter(|&b| e4m3_to_f32(b).is_nan()).count() == 2);
        for (b, want) in [
            (0x3cu8, 1.0f32),
            (0x7b, 57344.0),
            (0x01, pow2(-16)),
            (0x04, pow2(-14)),
            (0x00, 0.0),
            (0xbc, -1.0),
            (0x3e, 1.5),
            (0x7c, f32::INFINITY),
            (0xfc, f32::NEG_INFINITY),
        ] {
            assert_eq!(e5m2_to_f32(b), want, "E5M2 {b:#04x}");
        }
        assert!(e5m2_to_f32(0x7d).is_nan() && e5m2_to_f32(0xff).is_nan());
        // E5M2 is the top byte of an f16: check every finite code against half
        for b in 0..=255u8 {
            let h = f16::from_bits((b as u16) << 8).to_f32();
            let x = e5m2_to_f32(b);
            assert!(x == h || (x.is_nan() && h.is_nan()), "E5M2 {b:#04x}: {x} vs {h}");
        }
    }

    #[test]
    fn fp8_e4m3_block_scale_inv() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.safetensors");
        // 5×7 weight of FP8 codes, 2×2 blocks → scale [3, 4]
        let codes: Vec<u8> = (0..35).map(|i| [0x38u8, 0x40, 0xb8, 0x30, 0x00][i % 5]).collect();
        let scale: Vec<f32> = (0..12).map(|i| (i + 1) as f32 * 0.25).collect();
        write(
            &p,
            &st(&[
                ("l.weight", "F8_E4M3", vec![5, 7], codes.clone()),
                ("l.weight_scale_inv", "BF16", vec![3, 4], bf16b(&scale)),
            ]),
        );
        let ws = WeightSource::open(&p).unwrap();
        assert_eq!(ws.names().collect::<Vec<_>>(), ["l.weight"]);
        assert_eq!(ws.num_params(), 35);
        let want: Vec<f32> = (0..35).map(|i| e4m3_to_f32(codes[i]) * scale[(i / 7) / 2 * 4 + (i % 7) / 2]).collect();
        assert_eq!(ws.read("l.weight").unwrap(), want);
        assert_eq!(ws.read_rows("l.weight", 1..4).unwrap(), want[7..28]);
        assert_eq!(ws.read_row_list("l.weight", &[4, 1]).unwrap(), [&want[28..35], &want[7..14]].concat());
        // a scale that cannot tile the weight fails at open
        write(
            &p,
            &st(&[
                ("l.weight", "F8_E4M3", vec![5, 7], codes),
                ("l.weight_scale_inv", "F32", vec![4, 4], f32b(&[1.0; 16])),
            ]),
        );
        let e = err_of(&p);
        assert!(e.contains("l.weight_scale_inv") && e.contains("m.safetensors"), "{e}");
    }

    #[test]
    fn fp8_weight_scale_per_tensor_and_per_row() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.safetensors");
        let codes: Vec<u8> = vec![0x38, 0x40, 0x7e, 0xb8, 0x01, 0x30];
        write(
            &p,
            &st(&[
                ("a.weight", "F8_E4M3", vec![2, 3], codes.clone()),
                ("a.weight_scale", "F32", vec![], f32b(&[0.5])),
                ("a.input_scale", "F32", vec![1], f32b(&[3.0])),
                ("b.weight", "F8_E5M2", vec![3, 2], vec![0x3c, 0x40, 0x38, 0x3c, 0xbc, 0x00]),
                ("b.weight_scale", "BF16", vec![3, 1], bf16b(&[2.0, 4.0, 8.0])),
                ("c.weight", "F8_E4M3", vec![2], vec![0x38, 0x40]),
            ]),
        );
        let ws = WeightSource::open(&p).unwrap();
        assert_eq!(ws.names().collect::<Vec<_>>(), ["a.weight", "b.weight", "c.weight"]);
        let want: Vec<f32> = codes.iter().map(|&c| e4m3_to_f32(c) * 0.5).collect();
        assert_eq!(ws.read("a.weight").unwrap(), want);
        assert_eq!(ws.read("b.weight").unwrap(), [2.0, 4.0, 2.0, 4.0, -8.0, 0.0]);
        assert_eq!(ws.read_rows("b.weight", 2..3).unwrap(), [-8.0, 0.0]);
        assert_eq!(ws.read("c.weight").unwrap(), [1.0, 2.0]); // no scale: scale 1
        assert_eq!(ws.read("a.input_scale").unwrap(), [3.0]);
    }

    #[test]
    fn truncated_shard_fails_at_open() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("model.safetensors");
        let full = st(&[("a", "F32", vec![8, 8], f32b(&seq(64))), ("b", "F32", vec![8, 8], f32b(&seq(64)))]);
        write(&p, &full[..full.len() - 100]);
        let e = err_of(&p);
        assert!(e.contains("model.safetensors") && e.contains("tensor b") && e.contains("run past the end"), "{e}");
    }

    #[test]
    fn header_offsets_past_end_and_size_mismatch() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("bad.safetensors");
        write(&p, &st_raw(r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,1600]}}"#, &[0u8; 16]));
        let e = err_of(&p);
        assert!(e.contains("bad.safetensors") && e.contains("tensor w") && e.contains("[0, 1600]"), "{e}");
        write(&p, &st_raw(r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,12]}}"#, &[0u8; 16]));
        let e = err_of(&p);
        assert!(e.contains("bad.safetensors") && e.contains("tensor w") && e.contains("header claims"), "{e}");
        write(&p, &st_raw(r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[8,4]}}"#, &[0u8; 16]));
        assert!(err_of(&p).contains("tensor w"));
        let big = u64::MAX - 4;
        write(&p, &st_raw(&format!(r#"{{"w":{{"dtype":"F32","shape":[4],"data_offsets":[0,{big}]}}}}"#), &[0u8; 16]));
        assert!(err_of(&p).contains("run past the end"));
        write(
            &p,
            &st_raw(r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,16]}}"#, &[0u8; 16]),
        );
        assert!(err_of(&p).contains("header claims"));
        write(&p, &st_raw("not json", &[]));
        assert!(err_of(&p).contains("bad.safetensors"));
    }

    #[test]
    fn huge_claimed_tensor_fails_before_allocating() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("huge.safetensors");
        let n = 50_000u64 * 1_000_000 * 2;
        let h = format!(r#"{{"emb.weight":{{"dtype":"BF16","shape":[50000,1000000],"data_offsets":[0,{n}]}}}}"#);
        write(&p, &st_raw(&h, &[0u8; 64]));
        let e = err_of(&p);
        assert!(e.contains("huge.safetensors") && e.contains("tensor emb.weight") && e.contains("run past"), "{e}");
    }

    #[test]
    fn header_length_larger_than_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("h.safetensors");
        let mut bytes = 1000u64.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        write(&p, &bytes);
        let e = err_of(&p);
        assert!(e.contains("h.safetensors") && e.contains("header length 1000 exceeds the file size"), "{e}");
        write(&p, &u64::MAX.to_le_bytes());
        assert!(err_of(&p).contains("h.safetensors"));
        write(&p, b"abc");
        assert!(err_of(&p).contains("h.safetensors"));
    }

    #[test]
    fn index_missing_shard_or_tensor() {
        let d = tempfile::tempdir().unwrap();
        let s1 = "model-00001-of-00002.safetensors";
        write(&d.path().join(s1), &st(&[("x", "F32", vec![1], f32b(&[1.0]))]));
        let index = serde_json::json!({"weight_map": {"x": s1, "y": "model-00002-of-00002.safetensors"}});
        std::fs::write(d.path().join(INDEX_NAME), index.to_string()).unwrap();
        let e = err_of(d.path());
        assert!(
            e.contains(INDEX_NAME) && e.contains("model-00002-of-00002.safetensors") && e.contains("missing"),
            "{e}"
        );
        let index = serde_json::json!({"weight_map": {"x": s1, "z": s1}});
        std::fs::write(d.path().join(INDEX_NAME), index.to_string()).unwrap();
        let e = err_of(d.path());
        assert!(e.contains(INDEX_NAME) && e.contains(s1) && e.contains("tensor z"), "{e}");
        let index = serde_json::json!({"weight_map": {"x": "../x.safetensors"}});
        std::fs::write(d.path().join(INDEX_NAME), index.to_string()).unwrap();
        assert!(err_of(d.path()).contains("not a file name"));
    }

    #[test]
    fn non_finite_weight_names_tensor_and_row() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.safetensors");
        let mut v = seq(12);
        v[9] = f32::NAN;
        write(&p, &st(&[("w", "F32", vec![4, 3], f32b(&v)), ("e", "F8_E5M2", vec![2], vec![0x3c, 0x7c])]));
        let ws = WeightSource::open(&p).unwrap();
        let e = format!("{:#}", ws.read("w").unwrap_err());
        assert!(e.contains("m.safetensors") && e.contains("tensor w holds non-finite") && e.contains("row 3"), "{e}");
        assert_eq!(ws.read_rows("w", 0..3).unwrap(), v[..9]);
        let e = format!("{:#}", ws.read_row_list("w", &[1, 3]).unwrap_err());
        assert!(e.contains("row 3"), "{e}");
        assert!(format!("{:#}", ws.read("e").unwrap_err()).contains("tensor e holds non-finite"));
    }

    /// A llama-architecture GGUF (q/k rows in llama.cpp's pairwise order) reads back as the
    /// model's own tensors under HF names, whole, by row ranges and by row lists; Q8_0 within
    /// its blocks' rounding.
    #[test]
    fn gguf_files_read_as_their_model() {
        use jarip_interop::gguf_model::{export_gguf, GgufArch, WeightType};
        let d = tempfile::tempdir().unwrap();
        let docs = ["the cat sat on the mat 1234 대한민국".repeat(20)];
        let tok = jarip_tokenizer::train(
            docs.into_iter(),
            &jarip_tokenizer::TrainConfig { vocab_size: 300, ..Default::default() },
        )
        .unwrap();
        tok.save(&d.path().join("tok"), vec![]).unwrap();
        let mut cfg = jarip_model::ModelConfig::from_depth_arch(1, tok.vocab_size(), jarip_model::Arch::Llama);
        cfg.n_kv_head = 1; // grouped-query: k's heads differ from q's
        let model = jarip_model::Gpt::new(&cfg, 5, &candle_core::Device::Cpu).unwrap();
        let want: BTreeMap<String, Vec<f32>> =
            model.tensors().into_iter().map(|(n, t)| (n, t.flatten_all().unwrap().to_vec1::<f32>().unwrap())).collect();
        for (wt, tol) in [(WeightType::F32, 0.0f32), (WeightType::Q8_0, 0.02)] {
            let path = d.path().join(format!("m-{}.gguf", wt.name()));
            let tok_file = d.path().join("tok/tokenizer.json");
            export_gguf(&model, &tok_file, &path, wt, GgufArch::Llama, "test", &serde_json::Value::Null).unwrap();
            let src = WeightSource::open(&path).unwrap();
            assert_eq!(src.names().collect::<Vec<_>>(), want.keys().map(String::as_str).collect::<Vec<_>>());
            for (name, values) in &want {
                let got = src.read(name).unwrap();
                let worst = got.iter().zip(values).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                let scale = values.iter().fold(0f32, |m, v| m.max(v.abs()));
                assert!(worst <= tol * scale, "{} {name}: off by {worst}", wt.name());
                let info = src.info(name).unwrap();
                if info.rows() > 3 {
                    let (rl, r) = (info.row_len(), 1..info.rows() - 1);
                    assert_eq!(src.read_rows(name, r.clone()).unwrap(), got[rl..(info.rows() - 1) * rl], "{name}");
                    let list = [info.rows() - 1, 0, 2, 2];
                    let rows = src.read_row_list(name, &list).unwrap();
                    for (k, &row) in list.iter().enumerate() {
                        assert_eq!(rows[k * rl..(k + 1) * rl], got[row * rl..(row + 1) * rl], "{name} row {row}");
                    }
                }
            }
        }
    }

    #[test]
    fn pickle_gguf_and_missing_paths_refused() {
        let d = tempfile::tempdir().unwrap();
        let bin = d.path().join("pytorch_model.bin");
        write(&bin, b"\x80\x02not really a pickle");
        let e = err_of(&bin);
        assert!(e.contains("pickle") && e.contains("refused") && e.contains("safetensors"), "{e}");
        let e = err_of(d.path());
        assert!(e.contains("pytorch_model.bin") && e.contains("pickle") && e.contains("refused"), "{e}");
        for ext in ["pt", "pth", "ckpt", "pkl"] {
            let f = d.path().join(format!("w.{ext}"));
            write(&f, b"x");
            assert!(err_of(&f).contains("pickle"), "{ext}");
        }
        let g = tempfile::tempdir().unwrap();
        let gguf = g.path().join("model.gguf");
        write(&gguf, b"GGUF");
        assert!(err_of(&gguf).contains("model.gguf"), "a truncated GGUF is refused naming it");
        let e = err_of(g.path());
        assert!(e.contains("model.gguf") && e.contains("name the .gguf file itself"), "{e}");
        let none = d.path().join("nope");
        assert!(err_of(&none).contains("nope: no such model directory or file"));
        let empty = tempfile::tempdir().unwrap();
        assert!(err_of(empty.path()).contains("no .safetensors files"));
    }

    #[test]
    fn run_dir_resolves_newest_checkpoint_and_skips_optim() {
        let run = tempfile::tempdir().unwrap();
        for (step, val) in [("ckpt-000002", 2.0f32), ("ckpt-000010", 10.0)] {
            let c = run.path().join(step);
            std::fs::create_dir(&c).unwrap();
            write(&c.join("model.safetensors"), &st(&[("w", "F32", vec![1], f32b(&[val]))]));
            write(&c.join("optim.safetensors"), &st(&[("w", "F32", vec![1], f32b(&[-1.0]))]));
        }
        std::fs::write(run.path().join("tokenizer.json"), "{}").unwrap();
        let ws = WeightSource::open(run.path()).unwrap();
        assert!(ws.dir.ends_with("ckpt-000010"));
        assert_eq!(ws.files, [run.path().join("ckpt-000010/model.safetensors")]);
        assert_eq!(ws.read("w").unwrap(), [10.0]);
        assert_eq!(ws.tokenizer.as_deref(), Some(run.path().join("tokenizer.json").as_path()));
    }

    #[test]
    fn duplicate_tensor_across_files_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        write(&d.path().join("a.safetensors"), &st(&[("w", "F32", vec![1], f32b(&[1.0]))]));
        write(&d.path().join("b.safetensors"), &st(&[("w", "F32", vec![1], f32b(&[2.0]))]));
        let e = err_of(d.path());
        assert!(e.contains("tensor w") && e.contains("a.safetensors") && e.contains("b.safetensors"), "{e}");
    }
}
