//! jarip's GGUF reader and writer against candle's (`candle_core::quantized::gguf_file`), which
//! the ecosystem around candle reads and writes with.
//!
//! We keep our own: candle's reader sizes allocations by the counts a header claims (a string or
//! dimension list of 2⁶⁰ entries is allocated before any byte is checked), which an untrusted
//! file must not be able to do, and candle's writer emits GGUF version 2 with a fixed alignment
//! of 32 where llama.cpp writes version 3 and honours `general.alignment`, so its bytes are not
//! ours. What must hold instead, and is checked here: each reads what the other writes, values and
//! tensors alike (F32, F16, BF16 and Q8_0).

use candle_core::quantized::gguf_file;
use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType};
use candle_core::Device;
use jarip_interop::gguf::{encode_f32, GgmlType, GgufFile, GgufWriter, Value};

fn values(n: usize, salt: u32) -> Vec<f32> {
    (0..n).map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ salt) % 2001) as f32 / 1000.0 - 1.0).collect()
}

const TYPES: [(GgmlType, GgmlDType); 4] = [
    (GgmlType::F32, GgmlDType::F32),
    (GgmlType::F16, GgmlDType::F16),
    (GgmlType::BF16, GgmlDType::BF16),
    (GgmlType::Q8_0, GgmlDType::Q8_0),
];

#[test]
fn candle_reads_what_jarip_writes() {
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", Value::from("jarip")).unwrap();
    w.add_metadata("jarip.context_length", Value::U32(128)).unwrap();
    w.add_metadata("jarip.rope.freq_base", Value::F32(10_000.0)).unwrap();
    let shape = [3usize, 64];
    for (i, (ty, _)) in TYPES.iter().enumerate() {
        w.add_tensor_f32(format!("t{i}"), &shape, *ty, &values(192, i as u32)).unwrap();
    }
    let mut bytes = Vec::new();
    w.write_to(&mut bytes).unwrap();

    let mut cursor = std::io::Cursor::new(bytes.clone());
    let content = gguf_file::Content::read(&mut cursor).unwrap();
    assert_eq!(content.metadata["general.architecture"].to_string().unwrap(), "jarip");
    assert_eq!(content.metadata["jarip.context_length"].to_u32().unwrap(), 128);
    assert_eq!(content.metadata["jarip.rope.freq_base"].to_f32().unwrap(), 10_000.0);
    let ours = GgufFile::from_bytes(bytes, "written").unwrap();
    for (i, (_, dtype)) in TYPES.iter().enumerate() {
        let name = format!("t{i}");
        let q = content.tensor(&mut cursor, &name, &Device::Cpu).unwrap();
        assert_eq!(q.dtype(), *dtype, "{name}");
        assert_eq!(q.shape().dims(), &shape, "{name}: candle reads the row-major shape back");
        let theirs: Vec<f32> = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(theirs, ours.tensor_f32(&name).unwrap(), "{name}: candle and jarip decode the same values");
    }
}

#[test]
fn jarip_reads_what_candle_writes() {
    let shape = vec![4usize, 32];
    let mut tensors = Vec::new();
    for (i, (ty, dtype)) in TYPES.iter().enumerate() {
        let raw = encode_f32(&values(128, 7 + i as u32), *ty).unwrap();
        tensors.push((format!("w{i}"), qtensor_from_ggml(*dtype, &raw, shape.clone(), &Device::Cpu).unwrap(), raw));
    }
    let arch = gguf_file::Value::String("jarip".into());
    let layers = gguf_file::Value::U32(2);
    let list = gguf_file::Value::Array(vec![gguf_file::Value::I32(-1), gguf_file::Value::I32(5)]);
    let meta = [("general.architecture", &arch), ("jarip.block_count", &layers), ("x.list", &list)];
    let refs: Vec<(&str, &candle_core::quantized::QTensor)> = tensors.iter().map(|(n, q, _)| (n.as_str(), q)).collect();
    let mut cursor = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut cursor, &meta, &refs).unwrap();

    let file = GgufFile::from_bytes(cursor.into_inner(), "candle").unwrap();
    assert_eq!(file.get("general.architecture").and_then(Value::as_str), Some("jarip"));
    assert_eq!(file.get("jarip.block_count").and_then(Value::as_u64), Some(2));
    let list: Vec<i64> =
        file.get("x.list").and_then(Value::as_array).unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    assert_eq!(list, [-1, 5]);
    for (name, _, raw) in &tensors {
        assert_eq!(file.tensor(name).unwrap().shape(), shape, "{name}");
        assert_eq!(file.tensor_bytes(name).unwrap(), raw.as_slice(), "{name}: the bytes candle stored");
    }
}
