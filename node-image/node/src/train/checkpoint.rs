//! Checkpoints as canonical safetensors bytes: tensors sorted by name, all `F32`, little-endian,
//! contiguous, a header with sorted keys and no spaces but the padding. The same parameters and
//! optimizer state always give the same bytes, so a checkpoint's SHA-256 names it.

use std::collections::BTreeMap;

use pot_protocol::Hash;
use tch::{Kind, Tensor};

/// Why bytes are not a checkpoint this node can load.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("not a safetensors file: {0}")]
    Malformed(String),
    #[error("tensor {name} has dtype {dtype}; checkpoints hold F32 only")]
    WrongDtype { name: String, dtype: String },
    #[error("tensor {name} has shape {got:?}, the model expects {expected:?}")]
    WrongShape {
        name: String,
        expected: Vec<i64>,
        got: Vec<i64>,
    },
    #[error("checkpoint lacks tensor {0}")]
    Missing(String),
    #[error("checkpoint has unexpected tensor {0}")]
    Unexpected(String),
    #[error("checkpoint records step {recorded}, but it is at step {expected} of the run")]
    WrongStep { recorded: String, expected: u64 },
    #[error("tensor {0} holds a NaN or an infinity")]
    NotFinite(String),
    #[error("checkpoint metadata {key}: {why}")]
    Metadata { key: String, why: String },
    #[error("checkpoint bytes are not in canonical form (they would hash differently)")]
    NonCanonical,
}

/// Named tensors and string metadata, decoded.
pub struct Checkpoint {
    pub tensors: BTreeMap<String, Tensor>,
    pub metadata: BTreeMap<String, String>,
}

/// Each tensor's shape, by name.
pub fn shapes(tensors: &BTreeMap<String, Tensor>) -> BTreeMap<String, Vec<i64>> {
    tensors.iter().map(|(n, t)| (n.clone(), t.size())).collect()
}

impl Checkpoint {
    /// Check that this is a checkpoint at `step` of the model whose tensors have `shapes`: it
    /// records that step and nothing else, and holds exactly those tensors with those shapes.
    pub fn check_layout(
        &self,
        step: u64,
        shapes: &BTreeMap<String, Vec<i64>>,
    ) -> Result<(), CheckpointError> {
        let recorded = self.metadata.get("step").map(String::as_str);
        if recorded != Some(step.to_string().as_str()) {
            return Err(CheckpointError::WrongStep {
                recorded: recorded.unwrap_or("nothing").into(),
                expected: step,
            });
        }
        if let Some(key) = self.metadata.keys().find(|k| *k != "step") {
            return Err(CheckpointError::Metadata {
                key: key.clone(),
                why: "unexpected (a checkpoint records its step only)".into(),
            });
        }
        for (name, t) in &self.tensors {
            match shapes.get(name) {
                None => return Err(CheckpointError::Unexpected(name.clone())),
                Some(s) if *s != t.size() => {
                    return Err(CheckpointError::WrongShape {
                        name: name.clone(),
                        expected: s.clone(),
                        got: t.size(),
                    });
                }
                Some(_) => {}
            }
        }
        match shapes.keys().find(|n| !self.tensors.contains_key(*n)) {
            Some(missing) => Err(CheckpointError::Missing(missing.clone())),
            None => Ok(()),
        }
    }
}

/// The canonical bytes of `tensors` (converted to contiguous f32 on the CPU) and `metadata`.
pub fn encode(tensors: &BTreeMap<String, Tensor>, metadata: &BTreeMap<String, String>) -> Vec<u8> {
    let mut header = String::from("{");
    let json = |s: &str| serde_json::to_string(s).expect("strings serialise");
    if !metadata.is_empty() {
        header.push_str("\"__metadata__\":{");
        let entries: Vec<String> = metadata
            .iter()
            .map(|(k, v)| format!("{}:{}", json(k), json(v)))
            .collect();
        header.push_str(&entries.join(","));
        header.push('}');
    }
    let mut data: Vec<u8> = Vec::new();
    let mut first = metadata.is_empty();
    for (name, t) in tensors {
        let t = t
            .to_kind(Kind::Float)
            .to_device(tch::Device::Cpu)
            .contiguous();
        let n = t.numel();
        let start = data.len();
        data.resize(start + 4 * n, 0);
        // The raw f32 bytes, in the machine's order; safetensors stores little-endian.
        t.copy_data_u8(&mut data[start..], n);
        #[cfg(target_endian = "big")]
        for c in data[start..].chunks_exact_mut(4) {
            c.reverse();
        }
        let shape: Vec<String> = t.size().iter().map(|d| d.to_string()).collect();
        if !first {
            header.push(',');
        }
        first = false;
        header.push_str(&format!(
            "{}:{{\"dtype\":\"F32\",\"shape\":[{}],\"data_offsets\":[{},{}]}}",
            json(name),
            shape.join(","),
            start,
            data.len()
        ));
    }
    header.push('}');
    // The format pads the header with spaces to a multiple of 8 bytes.
    while !header.len().is_multiple_of(8) {
        header.push(' ');
    }
    let mut out = Vec::with_capacity(8 + header.len() + data.len());
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&data);
    out
}

/// The checkpoint's identity.
pub fn hash(bytes: &[u8]) -> Hash {
    Hash::digest(bytes)
}

/// Decode checkpoint bytes, rejecting anything but the canonical encoding of F32 tensors.
pub fn decode(bytes: &[u8]) -> Result<Checkpoint, CheckpointError> {
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| CheckpointError::Malformed(e.to_string()))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| CheckpointError::Malformed(e.to_string()))?;
    let metadata: BTreeMap<String, String> = meta
        .metadata()
        .clone()
        .map(|m| m.into_iter().collect())
        .unwrap_or_default();
    let mut tensors = BTreeMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(CheckpointError::WrongDtype {
                name,
                dtype: format!("{:?}", view.dtype()),
            });
        }
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        // safetensors accepts a dimension beyond i64 when another is zero; libtorch would
        // panic on it.
        let shape = view
            .shape()
            .iter()
            .map(|&d| i64::try_from(d))
            .collect::<Result<Vec<i64>, _>>()
            .map_err(|_| {
                CheckpointError::Malformed(format!("tensor {name} has a dimension beyond 2^63"))
            })?;
        let tensor = Tensor::from_slice(&values)
            .f_reshape(&shape)
            .map_err(|e| CheckpointError::Malformed(format!("tensor {name}: {e}")))?;
        tensors.insert(name, tensor);
    }
    if encode(&tensors, &metadata) != bytes {
        return Err(CheckpointError::NonCanonical);
    }
    Ok(Checkpoint { tensors, metadata })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> BTreeMap<String, Tensor> {
        let mut t = BTreeMap::new();
        t.insert("b".to_string(), Tensor::from_slice(&[1f32, 2.0, 3.0]));
        t.insert(
            "a".to_string(),
            Tensor::from_slice(&[0.5f32, -0.25, 4.0, 8.0]).reshape([2, 2]),
        );
        t
    }

    #[test]
    fn round_trips_and_is_canonical() {
        let meta: BTreeMap<String, String> = [("step".to_string(), "10".to_string())].into();
        let bytes = encode(&sample(), &meta);
        assert_eq!(bytes.len() % 4, 0);
        let back = decode(&bytes).unwrap();
        assert_eq!(back.metadata, meta);
        assert!(back.tensors["a"].equal(&sample()["a"]));
        assert_eq!(encode(&back.tensors, &back.metadata), bytes);
        // The same values in another insertion order give the same bytes.
        let mut other = BTreeMap::new();
        for (k, v) in sample().into_iter().rev() {
            other.insert(k, v);
        }
        assert_eq!(encode(&other, &meta), bytes);
    }

    #[test]
    fn bad_bytes_are_clear_errors() {
        let bytes = encode(&sample(), &BTreeMap::new());
        assert!(matches!(
            decode(&bytes[..bytes.len() - 3]),
            Err(CheckpointError::Malformed(_))
        ));
        assert!(matches!(
            decode(b"not a checkpoint"),
            Err(CheckpointError::Malformed(_))
        ));
        // A valid safetensors file whose header is laid out differently is not canonical.
        let hl = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + hl]).unwrap();
        let mut pretty = serde_json::to_string_pretty(&header).unwrap();
        while !pretty.len().is_multiple_of(8) {
            pretty.push(' ');
        }
        let mut other = (pretty.len() as u64).to_le_bytes().to_vec();
        other.extend_from_slice(pretty.as_bytes());
        other.extend_from_slice(&bytes[8 + hl..]);
        assert!(safetensors::SafeTensors::deserialize(&other).is_ok());
        assert!(matches!(decode(&other), Err(CheckpointError::NonCanonical)));
    }
}
