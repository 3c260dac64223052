//! Input expansion and streaming document readers.
//!
//! [`DocumentSource::new`] turns the user's input arguments into a fixed, sorted list of files:
//! - a file is taken as is (its extension must be a known one, see [`KNOWN_EXTENSIONS`]);
//! - a directory is walked recursively in byte order of names, skipping dot files; files with an
//!   unknown extension inside a directory are skipped and listed in [`DocumentSource::skipped`];
//! - a path that does not exist but contains `*`, `?` or `[` is a glob pattern (matches sorted);
//! - a directory written by `data prepare` (it holds `documents.jsonl` or `documents-NNNNN.jsonl`)
//!   is read as its documents files, in order, always with the field `text`.
//!
//! [`DocumentSource::iter`] then streams documents without ever holding a whole input in memory:
//! - `.txt`: one document per file; a file over `max_doc_bytes` is cut into documents at blank
//!   lines (failing that at a line end, failing that at a character boundary);
//! - `.jsonl` / `.ndjson`: one document per non-blank line, the string field `text_field`;
//!   a `null` field is an empty document (dropped later); a missing field is always an error,
//!   since it nearly always means a wrong `--text-field`;
//! - `.parquet`: one document per row of the string (BYTE_ARRAY) column `text_field`, read one
//!   row group at a time with the column reader; null is an empty document.
//!
//! Every format may be compressed: `.gz` (multi-member gzip) or `.zst`. Compressed parquet is
//! first decompressed to a temporary file, since parquet needs random access.
//!
//! Invalid UTF-8, malformed JSON lines and non-string fields follow [`OnInvalid`]: `Fail` stops
//! with an error naming the file and byte offset or line; `Skip` drops that document, counts it in
//! [`IngestStats::invalid_skipped`] and keeps a warning.

use anyhow::{anyhow, bail, Context, Result};
use parquet::basic::Type as PhysicalType;
use parquet::column::reader::{get_typed_column_reader, ColumnReaderImpl};
use parquet::data_type::{ByteArray, ByteArrayType};
use parquet::file::reader::{FileReader, SerializedFileReader};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// File name endings [`DocumentSource`] understands.
pub const KNOWN_EXTENSIONS: &[&str] = &[
    ".txt",
    ".txt.gz",
    ".txt.zst",
    ".jsonl",
    ".jsonl.gz",
    ".jsonl.zst",
    ".ndjson",
    ".ndjson.gz",
    ".ndjson.zst",
    ".parquet",
    ".parquet.gz",
    ".parquet.zst",
];

/// Default cap on one `.txt` document, in bytes.
pub const DEFAULT_MAX_DOC_BYTES: usize = 8 << 20;

/// At most this many warning texts are kept (all are counted).
const MAX_WARNINGS: usize = 100;

/// What to do with a document that cannot be read (invalid UTF-8, malformed JSON line).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnInvalid {
    /// Drop the document, count it and keep a warning.
    Skip,
    /// Stop with an error naming the file and position.
    #[default]
    Fail,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestOptions {
    /// JSONL field / parquet column holding the text.
    pub text_field: String,
    /// Larger `.txt` files are cut into documents of at most this many bytes.
    pub max_doc_bytes: usize,
    pub on_invalid: OnInvalid,
}

impl Default for IngestOptions {
    fn default() -> Self {
        Self { text_field: "text".into(), max_doc_bytes: DEFAULT_MAX_DOC_BYTES, on_invalid: OnInvalid::Fail }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    Text,
    Jsonl,
    Parquet,
    /// `documents*.jsonl` of a prepared-corpus directory (field `text`).
    Prepared,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputFile {
    pub path: PathBuf,
    pub format: InputFormat,
    pub compression: Compression,
}

/// One document as read, before cleaning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Document {
    pub text: String,
    /// Index into [`DocumentSource::files`].
    pub file_index: usize,
}

/// Counters kept while reading.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestStats {
    pub files_read: u64,
    pub documents: u64,
    /// UTF-8 bytes of the documents yielded.
    pub bytes: u64,
    pub invalid_skipped: u64,
    /// The first warnings (at most 100); all are counted in `invalid_skipped`.
    pub warnings: Vec<String>,
}

impl IngestStats {
    fn warn(&mut self, msg: String) {
        tracing::warn!("{msg}");
        if self.warnings.len() < MAX_WARNINGS {
            self.warnings.push(msg);
        }
    }
}

/// The expanded, ordered list of input files plus the options to read them with.
#[derive(Clone, Debug)]
pub struct DocumentSource {
    files: Vec<InputFile>,
    skipped: Vec<PathBuf>,
    opts: IngestOptions,
}

/// `(format, compression)` for a file name, from its ending.
pub fn classify(path: &Path) -> Option<(InputFormat, Compression)> {
    let name = path.file_name()?.to_string_lossy().to_ascii_lowercase();
    let (stem, compression) = if let Some(s) = name.strip_suffix(".gz") {
        (s, Compression::Gzip)
    } else if let Some(s) = name.strip_suffix(".zst") {
        (s, Compression::Zstd)
    } else {
        (name.as_str(), Compression::None)
    };
    let format = if stem.ends_with(".txt") {
        InputFormat::Text
    } else if stem.ends_with(".jsonl") || stem.ends_with(".ndjson") {
        InputFormat::Jsonl
    } else if stem.ends_with(".parquet") {
        InputFormat::Parquet
    } else {
        return None;
    };
    Some((format, compression))
}

fn is_documents_file(name: &str) -> bool {
    name == "documents.jsonl"
        || name
            .strip_prefix("documents-")
            .and_then(|r| r.strip_suffix(".jsonl"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The documents files of a prepared-corpus directory, in reading order; empty if it is not one.
pub fn prepared_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let e = e.with_context(|| format!("cannot list {}", dir.display()))?;
        let name = e.file_name().to_string_lossy().to_string();
        if is_documents_file(&name) && e.file_type()?.is_file() {
            files.push(e.path());
        }
    }
    // "documents.jsonl" sorts before "documents-00000.jsonl" only by accident of bytes ('.' < '-'
    // is false), so order explicitly: the single file, then the numbered parts.
    files.sort_by_key(|p| (p.file_name().is_some_and(|n| n != "documents.jsonl"), p.clone()));
    Ok(files)
}

fn has_glob_meta(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

impl DocumentSource {
    /// Expands `inputs` (files, directories, glob patterns) into a sorted list of readable files.
    pub fn new<P: AsRef<Path>>(inputs: &[P], opts: IngestOptions) -> Result<Self> {
        if opts.max_doc_bytes < 16 {
            bail!("max_doc_bytes must be at least 16, got {}", opts.max_doc_bytes);
        }
        let mut src = Self { files: Vec::new(), skipped: Vec::new(), opts };
        let mut seen = HashSet::new();
        if inputs.is_empty() {
            bail!("no inputs given");
        }
        for input in inputs {
            let input = input.as_ref();
            let text = input.to_string_lossy();
            if !input.exists() && has_glob_meta(&text) {
                let mut matches = Vec::new();
                for m in glob::glob(&text).with_context(|| format!("bad glob pattern {text}"))? {
                    matches.push(m.with_context(|| format!("cannot read a match of {text}"))?);
                }
                matches.sort();
                if matches.is_empty() {
                    bail!("glob pattern {text} matched no files");
                }
                for m in matches {
                    src.add_path(&m, &mut seen)?;
                }
            } else if !input.exists() {
                bail!("input {} does not exist", input.display());
            } else {
                src.add_path(input, &mut seen)?;
            }
        }
        if src.files.is_empty() {
            bail!(
                "no input files found in {} (known extensions: {})",
                inputs.iter().map(|p| p.as_ref().display().to_string()).collect::<Vec<_>>().join(", "),
                KNOWN_EXTENSIONS.join(" ")
            );
        }
        Ok(src)
    }

    fn add_path(&mut self, path: &Path, seen: &mut HashSet<PathBuf>) -> Result<()> {
        if path.is_dir() {
            self.add_dir(path, seen)
        } else {
            let (format, compression) = classify(path).ok_or_else(|| {
                anyhow!("{}: unknown input extension (known: {})", path.display(), KNOWN_EXTENSIONS.join(" "))
            })?;
            self.push(path.to_path_buf(), format, compression, seen);
            Ok(())
        }
    }

    fn push(&mut self, path: PathBuf, format: InputFormat, compression: Compression, seen: &mut HashSet<PathBuf>) {
        // The same file named twice (say by a directory and a glob) is read once.
        let key = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        if seen.insert(key) {
            self.files.push(InputFile { path, format, compression });
        }
    }

    fn add_dir(&mut self, dir: &Path, seen: &mut HashSet<PathBuf>) -> Result<()> {
        let prepared = prepared_files(dir)?;
        if !prepared.is_empty() {
            for p in prepared {
                self.push(p, InputFormat::Prepared, Compression::None, seen);
            }
            return Ok(());
        }
        let mut entries: Vec<PathBuf> = Vec::new();
        for e in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
            let e = e.with_context(|| format!("cannot list {}", dir.display()))?;
            if e.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            entries.push(e.path());
        }
        entries.sort();
        for p in entries {
            if p.is_dir() {
                self.add_dir(&p, seen)?;
            } else if let Some((format, compression)) = classify(&p) {
                self.push(p, format, compression, seen);
            } else {
                self.skipped.push(p);
            }
        }
        Ok(())
    }

    /// The files that will be read, in reading order.
    pub fn files(&self) -> &[InputFile] {
        &self.files
    }

    /// Files found inside input directories whose extension is not a known one.
    pub fn skipped(&self) -> &[PathBuf] {
        &self.skipped
    }

    pub fn options(&self) -> &IngestOptions {
        &self.opts
    }

    /// Streams every document of every file, in order. After an error the iterator ends.
    pub fn iter(&self) -> DocIter<'_> {
        DocIter { src: self, next_file: 0, current: None, stats: IngestStats::default(), failed: false }
    }
}

/// Iterator over the documents of a [`DocumentSource`]; [`DocIter::stats`] counts what it read.
pub struct DocIter<'a> {
    src: &'a DocumentSource,
    next_file: usize,
    current: Option<FileDocs>,
    stats: IngestStats,
    failed: bool,
}

impl DocIter<'_> {
    pub fn stats(&self) -> &IngestStats {
        &self.stats
    }

    fn step(&mut self) -> Result<Option<Document>> {
        loop {
            if let Some(cur) = &mut self.current {
                if let Some(text) = cur.next_doc(&self.src.opts, &mut self.stats)? {
                    self.stats.documents += 1;
                    self.stats.bytes += text.len() as u64;
                    return Ok(Some(Document { text, file_index: self.next_file - 1 }));
                }
                self.current = None;
            }
            let Some(file) = self.src.files.get(self.next_file) else { return Ok(None) };
            self.current = Some(FileDocs::open(file, &self.src.opts)?);
            self.stats.files_read += 1;
            self.next_file += 1;
        }
    }
}

impl Iterator for DocIter<'_> {
    type Item = Result<Document>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.step() {
            Ok(d) => d.map(Ok),
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

type Stream = Box<dyn Read + Send>;

fn open_stream(path: &Path, compression: Compression) -> Result<Stream> {
    let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let f = BufReader::with_capacity(1 << 20, f);
    Ok(match compression {
        Compression::None => Box::new(f),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(f)),
        Compression::Zstd => Box::new(
            zstd::Decoder::with_buffer(f)
                .with_context(|| format!("cannot start zstd decoding of {}", path.display()))?,
        ),
    })
}

enum FileDocs {
    Text(TextDocs),
    Jsonl(JsonlDocs),
    Parquet(Box<ParquetDocs>),
}

impl FileDocs {
    fn open(file: &InputFile, opts: &IngestOptions) -> Result<Self> {
        Ok(match file.format {
            InputFormat::Text => FileDocs::Text(TextDocs {
                path: file.path.clone(),
                compressed: file.compression != Compression::None,
                stream: open_stream(&file.path, file.compression)?,
                buf: Vec::new(),
                offset: 0,
                eof: false,
                max: opts.max_doc_bytes,
            }),
            InputFormat::Jsonl | InputFormat::Prepared => FileDocs::Jsonl(JsonlDocs {
                path: file.path.clone(),
                reader: BufReader::with_capacity(1 << 20, open_stream(&file.path, file.compression)?),
                line_no: 0,
                line: Vec::new(),
                field: if file.format == InputFormat::Prepared { "text".into() } else { opts.text_field.clone() },
            }),
            InputFormat::Parquet => FileDocs::Parquet(Box::new(ParquetDocs::open(file, &opts.text_field)?)),
        })
    }

    fn next_doc(&mut self, opts: &IngestOptions, stats: &mut IngestStats) -> Result<Option<String>> {
        match self {
            FileDocs::Text(t) => t.next_doc(opts.on_invalid, stats),
            FileDocs::Jsonl(j) => j.next_doc(opts.on_invalid, stats),
            FileDocs::Parquet(p) => p.next_doc(opts.on_invalid, stats),
        }
    }
}

/// Applies the invalid-input policy: `Fail` turns `msg` into the error, `Skip` counts and warns.
fn invalid(policy: OnInvalid, stats: &mut IngestStats, msg: String) -> Result<()> {
    match policy {
        OnInvalid::Fail => Err(anyhow!(msg)),
        OnInvalid::Skip => {
            stats.invalid_skipped += 1;
            stats.warn(format!("{msg} (document skipped)"));
            Ok(())
        }
    }
}

struct TextDocs {
    path: PathBuf,
    compressed: bool,
    stream: Stream,
    /// Bytes read but not yet returned; `buf[0]` is at byte `offset` of the (decompressed) file.
    buf: Vec<u8>,
    offset: u64,
    eof: bool,
    max: usize,
}

/// Where to cut `buf` (longer than `max`) so the first part has at most `max` bytes: after the
/// last blank line, else after the last line end, else at the last character boundary.
fn text_split_point(buf: &[u8], max: usize) -> usize {
    let window = &buf[..max];
    let mut last_newline = None;
    for i in (0..window.len()).rev() {
        if window[i] == b'\n' {
            last_newline.get_or_insert(i + 1);
            // A blank line: "\n\n" or "\n\r\n" ending at or before the window end.
            if i > 0 && window[i - 1] == b'\n' {
                return i + 1;
            }
            if i > 1 && window[i - 1] == b'\r' && window[i - 2] == b'\n' {
                return i + 1;
            }
        }
    }
    if let Some(p) = last_newline {
        return p;
    }
    // Back off over UTF-8 continuation bytes (0b10xx_xxxx) so a character is not cut.
    let mut p = max;
    while p > 0 && max - p < 4 && (buf[p] & 0xC0) == 0x80 {
        p -= 1;
    }
    if p == 0 {
        max
    } else {
        p
    }
}

impl TextDocs {
    /// Reads until `buf` holds more than `max` bytes or the stream ends. `read_to_end` grows the
    /// buffer as data arrives, so a small file costs a small buffer.
    fn fill(&mut self) -> Result<()> {
        if !self.eof && self.buf.len() <= self.max {
            let want = (self.max + 1 - self.buf.len()) as u64;
            let n = (&mut self.stream)
                .take(want)
                .read_to_end(&mut self.buf)
                .with_context(|| format!("cannot read {}", self.path.display()))?;
            if (n as u64) < want {
                self.eof = true;
            }
        }
        Ok(())
    }

    fn next_doc(&mut self, policy: OnInvalid, stats: &mut IngestStats) -> Result<Option<String>> {
        loop {
            self.fill()?;
            if self.buf.is_empty() {
                return Ok(None);
            }
            let bytes = if self.buf.len() <= self.max {
                std::mem::take(&mut self.buf)
            } else {
                let cut = text_split_point(&self.buf, self.max);
                let rest = self.buf.split_off(cut);
                std::mem::replace(&mut self.buf, rest)
            };
            let start = self.offset;
            self.offset += bytes.len() as u64;
            match String::from_utf8(bytes) {
                Ok(s) => return Ok(Some(s)),
                Err(e) => {
                    let at = start + e.utf8_error().valid_up_to() as u64;
                    let what = if self.compressed { " of the decompressed text" } else { "" };
                    invalid(
                        policy,
                        stats,
                        format!("{}: invalid UTF-8 at byte offset {at}{what}", self.path.display()),
                    )?;
                }
            }
        }
    }
}

struct JsonlDocs {
    path: PathBuf,
    reader: BufReader<Stream>,
    line_no: u64,
    line: Vec<u8>,
    field: String,
}

/// What one JSONL line held under the wanted field.
enum Extracted {
    Missing,
    Text(String),
    Null,
    NotString,
}

/// Pulls one field out of a JSON object without building the rest of it.
struct FieldSeed<'a>(&'a str);

impl<'de> serde::de::DeserializeSeed<'de> for FieldSeed<'_> {
    type Value = Extracted;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<Extracted, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for FieldSeed<'_> {
    type Value = Extracted;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> std::result::Result<Extracted, A::Error> {
        let mut out = Extracted::Missing;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == self.0 && matches!(out, Extracted::Missing) {
                out = match map.next_value::<serde_json::Value>()? {
                    serde_json::Value::String(s) => Extracted::Text(s),
                    serde_json::Value::Null => Extracted::Null,
                    _ => Extracted::NotString,
                };
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(out)
    }
}

fn extract_field(line: &[u8], field: &str) -> serde_json::Result<Extracted> {
    use serde::de::DeserializeSeed;
    let mut de = serde_json::Deserializer::from_slice(line);
    let v = FieldSeed(field).deserialize(&mut de)?;
    de.end()?;
    Ok(v)
}

impl JsonlDocs {
    fn next_doc(&mut self, policy: OnInvalid, stats: &mut IngestStats) -> Result<Option<String>> {
        loop {
            self.line.clear();
            let n = self
                .reader
                .read_until(b'\n', &mut self.line)
                .with_context(|| format!("cannot read {} after line {}", self.path.display(), self.line_no))?;
            if n == 0 {
                return Ok(None);
            }
            self.line_no += 1;
            if self.line.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            let at = format!("{}:{}", self.path.display(), self.line_no);
            match extract_field(&self.line, &self.field) {
                Ok(Extracted::Text(s)) => return Ok(Some(s)),
                Ok(Extracted::Null) => return Ok(Some(String::new())),
                Ok(Extracted::Missing) => bail!("{at}: missing field \"{}\"", self.field),
                Ok(Extracted::NotString) => {
                    invalid(policy, stats, format!("{at}: field \"{}\" is not a string", self.field))?
                }
                Err(e) => invalid(policy, stats, format!("{at}: malformed JSON line: {e}"))?,
            }
        }
    }
}

struct ParquetDocs {
    path: PathBuf,
    reader: SerializedFileReader<File>,
    column: usize,
    max_def: i16,
    next_row_group: usize,
    column_reader: Option<ColumnReaderImpl<ByteArrayType>>,
    values: Vec<ByteArray>,
    defs: Vec<i16>,
    /// Position in `defs` (or `values` when the column is required) and in `values`.
    level_pos: usize,
    level_len: usize,
    value_pos: usize,
    row: u64,
    /// Keeps a decompressed copy alive while it is read.
    _decompressed: Option<tempfile::NamedTempFile>,
}

impl ParquetDocs {
    fn open(file: &InputFile, field: &str) -> Result<Self> {
        let path = &file.path;
        let (handle, tmp) = if file.compression == Compression::None {
            (File::open(path).with_context(|| format!("cannot open {}", path.display()))?, None)
        } else {
            let mut tmp = tempfile::NamedTempFile::new().context("cannot create a temporary file")?;
            std::io::copy(&mut open_stream(path, file.compression)?, tmp.as_file_mut())
                .with_context(|| format!("cannot decompress {}", path.display()))?;
            (tmp.reopen().context("cannot reopen a temporary file")?, Some(tmp))
        };
        let reader = SerializedFileReader::new(handle)
            .with_context(|| format!("cannot read parquet file {}", path.display()))?;
        let schema = reader.metadata().file_metadata().schema_descr();
        let columns = schema.columns();
        let column = columns.iter().position(|c| c.path().string() == field).ok_or_else(|| {
            let names: Vec<String> = columns.iter().map(|c| c.path().string()).collect();
            anyhow!("{}: missing column \"{field}\" (columns: {})", path.display(), names.join(", "))
        })?;
        let desc = &columns[column];
        if desc.physical_type() != PhysicalType::BYTE_ARRAY || desc.max_rep_level() > 0 {
            bail!("{}: column \"{field}\" is not a plain string column", path.display());
        }
        Ok(Self {
            path: path.clone(),
            max_def: desc.max_def_level(),
            reader,
            column,
            next_row_group: 0,
            column_reader: None,
            values: Vec::new(),
            defs: Vec::new(),
            level_pos: 0,
            level_len: 0,
            value_pos: 0,
            row: 0,
            _decompressed: tmp,
        })
    }

    /// Refills the level/value buffers; false at the end of the file.
    fn refill(&mut self) -> Result<bool> {
        let ctx = || format!("cannot read parquet file {}", self.path.display());
        loop {
            if let Some(r) = &mut self.column_reader {
                self.values.clear();
                self.defs.clear();
                let (records, _values, levels) =
                    r.read_records(1024, Some(&mut self.defs), None, &mut self.values).with_context(ctx)?;
                if records > 0 {
                    self.level_pos = 0;
                    self.value_pos = 0;
                    self.level_len = if self.max_def > 0 { levels } else { records };
                    return Ok(true);
                }
                self.column_reader = None;
            }
            if self.next_row_group >= self.reader.num_row_groups() {
                return Ok(false);
            }
            let rg = self.reader.get_row_group(self.next_row_group).with_context(ctx)?;
            self.next_row_group += 1;
            let col = rg.get_column_reader(self.column).with_context(ctx)?;
            self.column_reader = Some(get_typed_column_reader::<ByteArrayType>(col));
        }
    }

    fn next_doc(&mut self, policy: OnInvalid, stats: &mut IngestStats) -> Result<Option<String>> {
        loop {
            if self.level_pos >= self.level_len && !self.refill()? {
                return Ok(None);
            }
            let present = self.max_def == 0 || self.defs[self.level_pos] == self.max_def;
            self.level_pos += 1;
            self.row += 1;
            if !present {
                return Ok(Some(String::new()));
            }
            let v = self.values.get(self.value_pos).ok_or_else(|| {
                anyhow!("{}: row {}: fewer values than levels (corrupt file?)", self.path.display(), self.row)
            })?;
            self.value_pos += 1;
            match std::str::from_utf8(v.data()) {
                Ok(s) => return Ok(Some(s.to_string())),
                Err(e) => invalid(
                    policy,
                    stats,
                    format!(
                        "{}: row {}: invalid UTF-8 at byte offset {} of the value",
                        self.path.display(),
                        self.row,
                        e.valid_up_to()
                    ),
                )?,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_endings() {
        assert_eq!(classify(Path::new("a/b.txt")), Some((InputFormat::Text, Compression::None)));
        assert_eq!(classify(Path::new("b.JSONL.gz")), Some((InputFormat::Jsonl, Compression::Gzip)));
        assert_eq!(classify(Path::new("b.parquet.zst")), Some((InputFormat::Parquet, Compression::Zstd)));
        assert_eq!(classify(Path::new("b.csv")), None);
        assert!(is_documents_file("documents-00012.jsonl"));
        assert!(!is_documents_file("documents-x.jsonl"));
    }

    #[test]
    fn split_prefers_blank_lines_then_newlines_then_char_boundaries() {
        assert_eq!(text_split_point(b"aa\n\nbb\ncc", 8), 4);
        assert_eq!(text_split_point(b"aa\r\n\r\nbbbbbbbb", 8), 6);
        assert_eq!(text_split_point(b"aaa\nbbbbbb", 8), 4);
        let s = "가나다라".as_bytes(); // 3 bytes each
        assert_eq!(text_split_point(s, 4), 3);
    }
}
