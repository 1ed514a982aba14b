//! Reading datasets: CSV, safetensors and IDX (MNIST's format), gzip-compressed or not, and the
//! built-in UCI digits. Every reader checks shapes and labels and says what is wrong.

use std::io::Read;

use pot_protocol::Hash;
use pot_protocol::sampling::BeaconRng;
use tch::{Kind, Tensor};

use super::data::Dataset;

/// Why bytes are not a dataset.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("{format}: {why}")]
    Format { format: &'static str, why: String },
    #[error("dataset has no examples")]
    Empty,
}

fn bad(format: &'static str, why: impl Into<String>) -> DatasetError {
    DatasetError::Format {
        format,
        why: why.into(),
    }
}

/// The digits CSV shipped in the repository (see `data/digits/README.md`).
pub const DIGITS_CSV_GZ: &[u8] = include_bytes!("../../data/digits/digits.csv.gz");
/// The MNIST subset shipped in the repository (see `data/mnist-5k/README.md`).
pub const MNIST_5K_CSV_GZ: &[u8] = include_bytes!("../../data/mnist-5k/mnist-5k.csv.gz");

/// A dataset compiled into `pot-node`, named by the locator `builtin:<name>`; its bytes are
/// still checked against the SHA-256 a task names, like any other locator's.
pub struct Builtin {
    pub name: &'static str,
    /// CSV (pixels, then the label), gzip-compressed.
    pub csv_gz: &'static [u8],
    /// The largest pixel value: features are divided by it to lie in [0, 1].
    pub max_pixel: f64,
    pub image: [i64; 3],
}

pub const BUILTINS: &[Builtin] = &[
    // UCI digits: 1,797 images of 8×8 pixels, values 0..16.
    Builtin {
        name: "digits",
        csv_gz: DIGITS_CSV_GZ,
        max_pixel: 16.0,
        image: [1, 8, 8],
    },
    // MNIST: 5,000 images of 28×28 pixels, values 0..255, 500 per class.
    Builtin {
        name: "mnist-5k",
        csv_gz: MNIST_5K_CSV_GZ,
        max_pixel: 255.0,
        image: [1, 28, 28],
    },
];

/// The built-in dataset called `name`.
pub fn builtin(name: &str) -> Option<&'static Builtin> {
    BUILTINS.iter().find(|b| b.name == name)
}

impl Builtin {
    pub fn load(&self) -> Dataset {
        let mut d = from_csv(self.csv_gz).expect("a shipped CSV is valid");
        d.x /= self.max_pixel;
        d.image = Some(self.image);
        d
    }
}

/// The built-in UCI digits: 1,797 images of 8×8 pixels scaled to [0, 1], ten classes.
pub fn digits() -> Dataset {
    builtin("digits").expect("digits is built in").load()
}

/// Decompress if the bytes are gzip.
pub fn maybe_gunzip(bytes: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, DatasetError> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut out)
            .map_err(|e| bad("gzip", e.to_string()))?;
        Ok(out.into())
    } else {
        Ok(bytes.into())
    }
}

/// CSV: one example per line, numeric features, the integer class label last. A first line
/// that is not numeric is taken as a header.
pub fn from_csv(bytes: &[u8]) -> Result<Dataset, DatasetError> {
    let raw = maybe_gunzip(bytes)?;
    let text = std::str::from_utf8(&raw).map_err(|_| bad("csv", "not UTF-8 text"))?;
    let mut width = None;
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let parsed: Result<Vec<f32>, _> = fields.iter().map(|f| f.parse::<f32>()).collect();
        let Ok(values) = parsed else {
            if i == 0 {
                continue;
            }
            return Err(bad(
                "csv",
                format!("line {}: a field is not a number", i + 1),
            ));
        };
        if values.len() < 2 {
            return Err(bad(
                "csv",
                format!("line {}: need features and a label", i + 1),
            ));
        }
        if *width.get_or_insert(values.len()) != values.len() {
            return Err(bad(
                "csv",
                format!(
                    "line {}: {} fields, earlier lines have {}",
                    i + 1,
                    values.len(),
                    width.unwrap_or(0)
                ),
            ));
        }
        let label = values[values.len() - 1];
        if label < 0.0 || label.fract() != 0.0 || label > 65_535.0 {
            return Err(bad(
                "csv",
                format!("line {}: label {label} is not a class index", i + 1),
            ));
        }
        x.extend_from_slice(&values[..values.len() - 1]);
        y.push(label as i64);
    }
    let Some(w) = width else {
        return Err(DatasetError::Empty);
    };
    Ok(make(x, &[y.len() as i64, (w - 1) as i64], y, None))
}

/// safetensors with `x` (features, any float or integer dtype, first dimension n) and `y`
/// (integer class labels, shape `[n]`). A 4-dimensional `x` is taken as images `[n, c, h, w]`.
pub fn from_safetensors(bytes: &[u8]) -> Result<Dataset, DatasetError> {
    use safetensors::Dtype;
    let raw = maybe_gunzip(bytes)?;
    let st = safetensors::SafeTensors::deserialize(&raw)
        .map_err(|e| bad("safetensors", e.to_string()))?;
    let x = st
        .tensor("x")
        .map_err(|_| bad("safetensors", "no tensor named x"))?;
    let y = st
        .tensor("y")
        .map_err(|_| bad("safetensors", "no tensor named y"))?;
    let as_f32 = |v: &safetensors::tensor::TensorView<'_>| -> Result<Vec<f32>, DatasetError> {
        let d = v.data();
        Ok(match v.dtype() {
            Dtype::F32 => d
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            Dtype::F64 => d
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32)
                .collect(),
            Dtype::U8 => d.iter().map(|&b| f32::from(b)).collect(),
            Dtype::I64 => d
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32)
                .collect(),
            Dtype::I32 => d
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f32)
                .collect(),
            other => {
                return Err(bad(
                    "safetensors",
                    format!("dtype {other:?} is not supported"),
                ));
            }
        })
    };
    let labels: Vec<i64> = match y.dtype() {
        Dtype::I64 => y
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        Dtype::I32 => y
            .data()
            .chunks_exact(4)
            .map(|c| i64::from(i32::from_le_bytes(c.try_into().unwrap())))
            .collect(),
        Dtype::U8 => y.data().iter().map(|&b| i64::from(b)).collect(),
        other => {
            return Err(bad(
                "safetensors",
                format!("y has dtype {other:?}; labels must be integers"),
            ));
        }
    };
    let xs = x.shape();
    if y.shape().len() != 1 || xs.is_empty() || xs[0] != y.shape()[0] {
        return Err(bad(
            "safetensors",
            format!(
                "x has shape {:?} and y {:?}: y must be [n] with n = x's first dimension",
                xs,
                y.shape()
            ),
        ));
    }
    if labels.iter().any(|&l| l < 0) {
        return Err(bad("safetensors", "y holds a negative label"));
    }
    let shape: Vec<i64> = xs.iter().map(|&d| d as i64).collect();
    let image = (shape.len() == 4).then(|| [shape[1], shape[2], shape[3]]);
    let flat = [shape[0], shape[1..].iter().product()];
    Ok(make(as_f32(&x)?, &flat, labels, image))
}

/// IDX images (`0x00000803`, u8) and labels (`0x00000801`, u8), as MNIST ships them; pixels are
/// scaled to [0, 1].
pub fn from_idx(images: &[u8], labels: &[u8]) -> Result<Dataset, DatasetError> {
    let images = maybe_gunzip(images)?;
    let labels = maybe_gunzip(labels)?;
    let u32_at = |b: &[u8], i: usize| -> Option<u32> {
        b.get(i..i + 4)
            .map(|s| u32::from_be_bytes(s.try_into().unwrap()))
    };
    if u32_at(&images, 0) != Some(0x0803) {
        return Err(bad(
            "idx",
            "images file does not start with magic 0x00000803 (u8, 3 dimensions)",
        ));
    }
    if u32_at(&labels, 0) != Some(0x0801) {
        return Err(bad(
            "idx",
            "labels file does not start with magic 0x00000801 (u8, 1 dimension)",
        ));
    }
    let (n, rows, cols) = match (u32_at(&images, 4), u32_at(&images, 8), u32_at(&images, 12)) {
        (Some(n), Some(r), Some(c)) => (n as usize, r as usize, c as usize),
        _ => return Err(bad("idx", "images header is truncated")),
    };
    let ln = u32_at(&labels, 4).ok_or_else(|| bad("idx", "labels header is truncated"))? as usize;
    if ln != n {
        return Err(bad("idx", format!("{n} images but {ln} labels")));
    }
    let need = 16 + n * rows * cols;
    if images.len() != need || labels.len() != 8 + n {
        return Err(bad(
            "idx",
            format!(
                "expected {need} image bytes and {} label bytes, got {} and {}",
                8 + n,
                images.len(),
                labels.len()
            ),
        ));
    }
    let x: Vec<f32> = images[16..].iter().map(|&p| f32::from(p) / 255.0).collect();
    let y: Vec<i64> = labels[8..].iter().map(|&l| i64::from(l)).collect();
    Ok(make(
        x,
        &[n as i64, (rows * cols) as i64],
        y,
        Some([1, rows as i64, cols as i64]),
    ))
}

fn make(x: Vec<f32>, shape: &[i64], y: Vec<i64>, image: Option<[i64; 3]>) -> Dataset {
    let classes = y.iter().max().map(|m| m + 1).unwrap_or(0);
    Dataset {
        x: Tensor::from_slice(&x).reshape(shape),
        y: Tensor::from_slice(&y).to_kind(Kind::Int64),
        classes,
        image,
    }
}

/// A deterministic split into `(train, held_out)`, `held_out_per_mille` of the examples held
/// out, chosen by a permutation from `seed`.
pub fn split(d: &Dataset, held_out_per_mille: u32, seed: u64) -> (Dataset, Dataset) {
    let n = d.len() as usize;
    let mut rng = BeaconRng::new(Hash::tagged("pot/split", &[&seed.to_le_bytes()]));
    let mut order: Vec<i64> = (0..n as i64).collect();
    for i in (1..n).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let cut = n * held_out_per_mille as usize / 1000;
    let (test, train) = order.split_at(cut);
    let pick = |idx: &[i64]| {
        let (x, y) = d.batch(idx);
        Dataset {
            x,
            y,
            classes: d.classes,
            image: d.image,
        }
    };
    (pick(train), pick(test))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hashes publishers check tasks against are those of the bytes shipped here.
    #[test]
    fn the_protocol_names_each_builtin_by_the_hash_of_its_bytes() {
        let names: Vec<&str> = BUILTINS.iter().map(|b| b.name).collect();
        let listed: Vec<&str> = pot_protocol::task::BUILTIN_DATASETS
            .iter()
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(names, listed);
        for b in BUILTINS {
            assert_eq!(
                pot_protocol::task::builtin_dataset_sha256(b.name),
                Some(Hash::digest(b.csv_gz)),
                "builtin:{}",
                b.name
            );
        }
    }

    #[test]
    fn digits_are_the_uci_set() {
        let d = digits();
        assert_eq!(d.x.size(), vec![1797, 64]);
        assert_eq!(d.classes, 10);
        assert_eq!(
            Hash::digest(DIGITS_CSV_GZ).to_hex(),
            "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22"
        );
        assert!(d.x.max().double_value(&[]) <= 1.0);
        let (train, test) = split(&d, 200, 1);
        assert_eq!(train.len() + test.len(), 1797);
        assert_eq!(test.len(), 359);
    }

    #[test]
    fn mnist_5k_is_the_shipped_subset() {
        let d = builtin("mnist-5k").unwrap().load();
        assert_eq!(d.x.size(), vec![5000, 784]);
        assert_eq!(d.classes, 10);
        assert_eq!(d.image, Some([1, 28, 28]));
        assert_eq!(
            Hash::digest(MNIST_5K_CSV_GZ).to_hex(),
            "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"
        );
        assert_eq!(d.x.max().double_value(&[]), 1.0);
        // 500 of each class.
        let counts = d.y.bincount(None::<&tch::Tensor>, 10);
        assert_eq!(Vec::<i64>::try_from(&counts).unwrap(), vec![500; 10]);
    }

    #[test]
    fn csv_errors_name_the_line() {
        let e = from_csv(b"1,2,0\n3,4\n").unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("2 fields"), "{e}");
        let e = from_csv(b"1,2,0\n3,x,1\n").unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
        let e = from_csv(b"1,2,0.5\n").unwrap_err().to_string();
        assert!(e.contains("not a class index"), "{e}");
        let d = from_csv(b"a,b,label\n1,2,0\n3,4,2\n").unwrap();
        assert_eq!((d.len(), d.classes), (2, 3));
        assert!(matches!(from_csv(b""), Err(DatasetError::Empty)));
    }

    fn idx(n: u32, rows: u32, cols: u32) -> (Vec<u8>, Vec<u8>) {
        let mut im = vec![0, 0, 8, 3];
        for v in [n, rows, cols] {
            im.extend(v.to_be_bytes());
        }
        im.extend((0..n * rows * cols).map(|i| (i % 256) as u8));
        let mut lb = vec![0, 0, 8, 1];
        lb.extend(n.to_be_bytes());
        lb.extend((0..n).map(|i| (i % 10) as u8));
        (im, lb)
    }

    #[test]
    fn idx_reads_and_rejects() {
        let (im, lb) = idx(12, 4, 5);
        let d = from_idx(&im, &lb).unwrap();
        assert_eq!(d.x.size(), vec![12, 20]);
        assert_eq!(d.image, Some([1, 4, 5]));
        let e = from_idx(&im[..im.len() - 1], &lb).unwrap_err().to_string();
        assert!(e.contains("expected"), "{e}");
        let e = from_idx(&lb, &im).unwrap_err().to_string();
        assert!(e.contains("magic"), "{e}");
        // gzip-compressed works the same.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &im).unwrap();
        assert!(from_idx(&gz.finish().unwrap(), &lb).is_ok());
    }

    #[test]
    fn safetensors_reads_and_rejects_wrong_shapes() {
        use std::collections::HashMap;
        let x: Vec<u8> = (0..6 * 4u32)
            .flat_map(|v| (v as f32).to_le_bytes())
            .collect();
        let y: Vec<u8> = (0..6i64).flat_map(|v| (v % 3).to_le_bytes()).collect();
        let mk = |ys: Vec<usize>| {
            let mut m = HashMap::new();
            m.insert(
                "x".to_string(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![6, 4], &x)
                    .unwrap(),
            );
            m.insert(
                "y".to_string(),
                safetensors::tensor::TensorView::new(
                    safetensors::Dtype::I64,
                    ys.clone(),
                    &y[..ys.iter().product::<usize>() * 8],
                )
                .unwrap(),
            );
            safetensors::serialize(m, None).unwrap()
        };
        let d = from_safetensors(&mk(vec![6])).unwrap();
        assert_eq!((d.len(), d.features(), d.classes), (6, 4, 3));
        let e = from_safetensors(&mk(vec![5])).unwrap_err().to_string();
        assert!(e.contains("first dimension"), "{e}");
        let good = mk(vec![6]);
        let e = from_safetensors(&good[..good.len() - 10])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("safetensors"), "{e}");
    }
}
