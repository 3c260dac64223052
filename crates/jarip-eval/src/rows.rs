//! Published benchmark files come as CSV, TSV, JSON (an array of objects), JSONL or Parquet.
//! Whatever the container, each record becomes a [`Row`]: a JSON object plus where it came
//! from, so every complaint about a record can name `file:line`.

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};
use std::path::Path;

#[derive(Debug, Clone)]
pub struct Row {
    /// `file:line` (JSONL, CSV), `file: item N` (JSON array) or `file: row N` (Parquet).
    pub at: String,
    pub fields: Map<String, Value>,
}

/// How a CSV file's first record is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CsvHeader {
    Present,
    /// No header: columns are named by these names, in order.
    Absent(&'static [&'static str]),
}

fn extension(path: &Path) -> String {
    path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default()
}

/// Reads every record of `path`, choosing the container by extension (`.csv`, `.tsv`, `.json`,
/// `.jsonl`/`.ndjson`, `.parquet`). `csv_header` tells how a CSV/TSV file's first line is read
/// (`None`: guess `Absent` only if the first line has none of the `Absent` names).
pub fn read_rows(path: &Path, csv_header: Option<CsvHeader>) -> Result<Vec<Row>> {
    if !path.exists() {
        bail!("task file {} does not exist", path.display());
    }
    match extension(path).as_str() {
        "jsonl" | "ndjson" => read_jsonl(path),
        "json" => read_json(path),
        "csv" => read_csv(path, b',', csv_header),
        "tsv" => read_csv(path, b'\t', csv_header),
        "parquet" => read_parquet(path),
        other => bail!(
            "{}: cannot tell the file format from the extension {other:?} (expected .csv, .tsv, .json, .jsonl or .parquet)",
            path.display()
        ),
    }
}

fn object(v: Value, at: &str) -> Result<Map<String, Value>> {
    match v {
        Value::Object(m) => Ok(m),
        other => bail!("{at}: expected a JSON object, found {}", kind_of(&other)),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub fn read_jsonl(path: &Path) -> Result<Vec<Row>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let at = format!("{}:{}", path.display(), i + 1);
        let v: Value = serde_json::from_str(line).with_context(|| format!("{at}: not JSON"))?;
        out.push(Row { fields: object(v, &at)?, at });
    }
    Ok(out)
}

fn read_json(path: &Path) -> Result<Vec<Row>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let v: Value = serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    // An array of records, or an object wrapping exactly one such array ({"data": [...]}).
    let items = match v {
        Value::Array(a) => a,
        Value::Object(m) => {
            let arrays: Vec<_> = m.into_iter().filter(|(_, v)| v.is_array()).collect();
            match <[_; 1]>::try_from(arrays) {
                Ok([(_, Value::Array(a))]) => a,
                _ => bail!("{}: expected an array of records (or an object holding one array)", path.display()),
            }
        }
        other => bail!("{}: expected an array of records, found {}", path.display(), kind_of(&other)),
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let at = format!("{}: item {}", path.display(), i + 1);
            Ok(Row { fields: object(v, &at)?, at })
        })
        .collect()
}

fn read_csv(path: &Path, delimiter: u8, header: Option<CsvHeader>) -> Result<Vec<Row>> {
    let open = || {
        csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .has_headers(false)
            .flexible(true)
            .from_path(path)
            .with_context(|| format!("cannot read {}", path.display()))
    };
    let mut records = Vec::new();
    for rec in open()?.records() {
        let rec = rec.with_context(|| format!("{}: malformed CSV", path.display()))?;
        let line = rec.position().map_or(0, |p| p.line());
        records.push((line, rec.iter().map(str::to_string).collect::<Vec<_>>()));
    }
    let Some((_, first)) = records.first() else { return Ok(vec![]) };
    let header = header.unwrap_or(CsvHeader::Present);
    let (names, body): (Vec<String>, &[_]) = match header {
        CsvHeader::Present => (first.clone(), &records[1..]),
        CsvHeader::Absent(names) => {
            // A file that does carry a header (some mirrors add one) is read by it; only the
            // first column's name is looked for, since later names ("A") can be cell values.
            if first.first().is_some_and(|c| c.trim().eq_ignore_ascii_case(names[0])) {
                (first.clone(), &records[1..])
            } else {
                (names.iter().map(|s| s.to_string()).collect(), &records[..])
            }
        }
    };
    let names: Vec<String> = names.iter().map(|n| n.trim().trim_start_matches('\u{feff}').to_string()).collect();
    let mut out = Vec::new();
    for (line, cols) in body {
        if cols.iter().all(|c| c.is_empty()) {
            continue;
        }
        let at = format!("{}:{line}", path.display());
        if cols.len() != names.len() {
            bail!("{at}: {} columns where the header has {}", cols.len(), names.len());
        }
        let fields = names.iter().cloned().zip(cols.iter().map(|c| Value::String(c.clone()))).collect();
        out.push(Row { at, fields });
    }
    Ok(out)
}

fn read_parquet(path: &Path) -> Result<Vec<Row>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let reader = SerializedFileReader::new(file).with_context(|| format!("{}: not a parquet file", path.display()))?;
    let mut out = Vec::new();
    for (i, row) in reader.get_row_iter(None)?.enumerate() {
        let at = format!("{}: row {}", path.display(), i + 1);
        let row = row.with_context(|| format!("{at}: unreadable"))?;
        let fields = row.get_column_iter().map(|(name, f)| (name.clone(), parquet_value(f))).collect();
        out.push(Row { at, fields });
    }
    Ok(out)
}

/// A parquet value as JSON (the subset benchmark files use: text, numbers, lists, structs).
fn parquet_value(f: &parquet::record::Field) -> Value {
    use parquet::record::Field as F;
    match f {
        F::Null => Value::Null,
        F::Bool(b) => Value::Bool(*b),
        F::Byte(v) => (*v).into(),
        F::Short(v) => (*v).into(),
        F::Int(v) => (*v).into(),
        F::Long(v) => (*v).into(),
        F::UByte(v) => (*v).into(),
        F::UShort(v) => (*v).into(),
        F::UInt(v) => (*v).into(),
        F::ULong(v) => (*v).into(),
        F::Float(v) => serde_json::Number::from_f64(*v as f64).map_or(Value::Null, Value::Number),
        F::Double(v) => serde_json::Number::from_f64(*v).map_or(Value::Null, Value::Number),
        F::Str(s) => Value::String(s.clone()),
        F::Bytes(b) => Value::String(String::from_utf8_lossy(b.data()).into_owned()),
        F::Group(row) => Value::Object(row.get_column_iter().map(|(n, f)| (n.clone(), parquet_value(f))).collect()),
        F::ListInternal(list) => Value::Array(list.elements().iter().map(parquet_value).collect()),
        other => Value::String(other.to_string()),
    }
}

/// Typed access to a row's fields, with errors that name the row, the field and what the
/// layout expects.
pub struct Fields<'a> {
    pub row: &'a Row,
    /// The layout's name and its expected fields, for messages.
    pub layout: &'a str,
    pub expected: &'a str,
}

impl<'a> Fields<'a> {
    pub fn new(row: &'a Row, layout: &'a str, expected: &'a str) -> Self {
        Self { row, layout, expected }
    }

    pub fn at(&self) -> &str {
        &self.row.at
    }

    pub fn get(&self, name: &str) -> Option<&'a Value> {
        self.row.fields.get(name).filter(|v| !v.is_null())
    }

    fn missing(&self, name: &str) -> anyhow::Error {
        anyhow::anyhow!(
            "{}: missing field {name:?}, which layout {} expects (fields: {}); is this file in that layout?",
            self.row.at,
            self.layout,
            self.expected
        )
    }

    /// A text field; numbers are accepted as their decimal text (CSV cells like `4`, JSON `4`).
    pub fn str(&self, name: &str) -> Result<String> {
        match self.get(name) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(Value::Number(n)) => Ok(n.to_string()),
            Some(Value::Bool(b)) => Ok(b.to_string()),
            Some(other) => bail!("{}: field {name:?} should be text, found {}", self.row.at, kind_of(other)),
            None => Err(self.missing(name)),
        }
    }

    /// An integer field: a JSON integer, or text holding one (`"1"`, `"1.0"`), or a boolean.
    pub fn int(&self, name: &str) -> Result<i64> {
        let bad = |v: &Value| anyhow::anyhow!("{}: field {name:?} should be an integer, found {v}", self.row.at);
        match self.get(name) {
            Some(Value::Number(n)) => n.as_i64().or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64)),
            Some(Value::Bool(b)) => Some(*b as i64),
            Some(Value::String(s)) => {
                let t = s.trim();
                match t.to_ascii_lowercase().as_str() {
                    "true" => Some(1),
                    "false" => Some(0),
                    _ => t
                        .parse::<i64>()
                        .ok()
                        .or_else(|| t.parse::<f64>().ok().filter(|f| f.fract() == 0.0).map(|f| f as i64)),
                }
            }
            Some(_) => None,
            None => return Err(self.missing(name)),
        }
        .ok_or_else(|| bad(self.get(name).unwrap()))
    }

    /// A list of texts: a JSON array, or text holding a JSON array (a list column exported to CSV).
    pub fn str_list(&self, name: &str) -> Result<Vec<String>> {
        let v = self.get(name).ok_or_else(|| self.missing(name))?;
        let parsed;
        let arr = match v {
            Value::Array(a) => a,
            Value::String(s) => {
                parsed = serde_json::from_str::<Value>(s).ok();
                match &parsed {
                    Some(Value::Array(a)) => a,
                    _ => bail!("{}: field {name:?} should be a list of texts, found text {s:?}", self.row.at),
                }
            }
            other => bail!("{}: field {name:?} should be a list of texts, found {}", self.row.at, kind_of(other)),
        };
        arr.iter()
            .map(|x| match x {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                other => bail!("{}: field {name:?} holds {}, not text", self.row.at, kind_of(other)),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_with_and_without_header() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.csv");
        std::fs::write(&p, "question,answer\n\"x, y\",1\nz,2\n").unwrap();
        let rows = read_rows(&p, None).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].fields["question"], "x, y");
        assert_eq!(rows[1].at, format!("{}:3", p.display()));
        std::fs::write(&p, "q1,a,b\n").unwrap();
        let rows = read_rows(&p, Some(CsvHeader::Absent(&["question", "A", "B"]))).unwrap();
        assert_eq!(rows[0].fields["question"], "q1");
        std::fs::write(&p, "q1,a\n").unwrap();
        let e = read_rows(&p, Some(CsvHeader::Absent(&["question", "A", "B"]))).unwrap_err().to_string();
        assert!(e.contains(":1: 2 columns where the header has 3"), "{e}");
    }

    #[test]
    fn json_array_or_wrapped_array() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.json");
        std::fs::write(&p, r#"[{"a": 1}, {"a": 2}]"#).unwrap();
        assert_eq!(read_rows(&p, None).unwrap().len(), 2);
        std::fs::write(&p, r#"{"version": "1", "data": [{"a": 1}]}"#).unwrap();
        assert_eq!(read_rows(&p, None).unwrap()[0].at, format!("{}: item 1", p.display()));
        std::fs::write(&p, r#"[1]"#).unwrap();
        assert!(read_rows(&p, None).unwrap_err().to_string().contains("expected a JSON object"));
    }

    #[test]
    fn typed_fields_explain_themselves() {
        let row = Row {
            at: "f.jsonl:3".into(),
            fields: serde_json::from_str(r#"{"a": "1", "b": 2.0, "c": "[\"x\", \"y\"]"}"#).unwrap(),
        };
        let f = Fields::new(&row, "demo", "a, b, c, d");
        assert_eq!(f.int("a").unwrap(), 1);
        assert_eq!(f.int("b").unwrap(), 2);
        assert_eq!(f.str_list("c").unwrap(), vec!["x", "y"]);
        let e = f.str("d").unwrap_err().to_string();
        assert!(e.contains("f.jsonl:3: missing field \"d\", which layout demo expects"), "{e}");
        assert!(f.str_list("a").is_err());
    }
}
