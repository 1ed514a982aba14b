//! Built-in models, described by a short string a task names (`mlp:64,32`).

use std::sync::Arc;

use anyhow::{Context, bail};
use pot_protocol::Hash;
use tch::nn::{self, Module, ModuleT};

use super::fetch::{Cache, fetch};

/// What to build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSpec {
    /// Logistic regression: one linear layer.
    Logistic,
    /// A multi-layer perceptron with ReLU between the given hidden widths.
    Mlp { hidden: Vec<i64> },
    /// LeNet-5 for image data.
    LeNet5,
    /// A small ResNet for image data: three stages of one basic block (16, 32, 64 channels).
    ResNetSmall,
    /// A user model: a TorchScript file (`torchscript:<locator>#<sha256>`), fetched and checked.
    TorchScript(Arc<ScriptFile>),
}

/// A fetched, hash-checked TorchScript file.
#[derive(Debug, PartialEq, Eq)]
pub struct ScriptFile {
    pub locator: String,
    pub sha256: Hash,
    pub bytes: Vec<u8>,
}

impl ModelSpec {
    /// Parse a model descriptor, fetching (and checking) a TorchScript file if it names one.
    pub fn resolve(s: &str, cache: &Cache) -> anyhow::Result<ModelSpec> {
        let Some(rest) = s.strip_prefix("torchscript:") else {
            return s.parse();
        };
        let (locator, hex) = rest
            .rsplit_once('#')
            .with_context(|| format!("model {s:?}: expected torchscript:<locator>#<sha256>"))?;
        let sha256: Hash = hex
            .parse()
            .with_context(|| format!("model {s:?}: sha256"))?;
        let bytes = fetch(locator, &sha256, cache)?;
        Ok(ModelSpec::TorchScript(Arc::new(ScriptFile {
            locator: locator.to_string(),
            sha256,
            bytes,
        })))
    }
}

impl std::str::FromStr for ModelSpec {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<ModelSpec> {
        match s.split_once(':') {
            None if s == "logistic" => Ok(ModelSpec::Logistic),
            None if s == "lenet5" => Ok(ModelSpec::LeNet5),
            None if s == "resnet-small" => Ok(ModelSpec::ResNetSmall),
            Some(("mlp", widths)) => {
                let hidden = widths
                    .split(',')
                    .map(|w| {
                        let w: i64 = w
                            .trim()
                            .parse()
                            .with_context(|| format!("model {s:?}: width {w:?}"))?;
                        if !(1..=65_536).contains(&w) {
                            bail!("model {s:?}: width {w} is outside 1..=65536");
                        }
                        Ok(w)
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                Ok(ModelSpec::Mlp { hidden })
            }
            _ => bail!(
                "unknown model {s:?}: expected `logistic`, `mlp:W1,W2,...`, `lenet5` or `resnet-small`"
            ),
        }
    }
}

/// A stack of linear layers with ReLU between them.
#[derive(Debug)]
pub struct Mlp {
    layers: Vec<nn::Linear>,
}

impl Mlp {
    pub fn new(p: &nn::Path, inputs: i64, hidden: &[i64], outputs: i64) -> Mlp {
        let mut widths = vec![inputs];
        widths.extend_from_slice(hidden);
        widths.push(outputs);
        let layers = widths
            .windows(2)
            .enumerate()
            .map(|(i, w)| nn::linear(p / format!("fc{i}"), w[0], w[1], Default::default()))
            .collect();
        Mlp { layers }
    }
}

impl Module for Mlp {
    fn forward(&self, xs: &tch::Tensor) -> tch::Tensor {
        let last = self.layers.len() - 1;
        self.layers
            .iter()
            .enumerate()
            .fold(xs.shallow_clone(), |x, (i, l)| {
                let y = l.forward(&x);
                if i < last { y.relu() } else { y }
            })
    }
}

/// LeNet-5's layout (two 5×5 convolutions with 6 and 16 channels, each followed by ReLU and
/// 2×2 max pooling, then dense layers of 120 and 84) with "same" padding, so that images of any
/// size down to 4×4 (the 8×8 digits as well as 28×28 MNIST) fit. Takes flattened images.
#[derive(Debug)]
pub struct LeNet5 {
    image: [i64; 3],
    conv1: nn::Conv2D,
    conv2: nn::Conv2D,
    fc1: nn::Linear,
    fc2: nn::Linear,
    fc3: nn::Linear,
}

impl LeNet5 {
    pub fn new(p: &nn::Path, image: [i64; 3], classes: i64) -> LeNet5 {
        let same = nn::ConvConfig {
            padding: 2,
            ..Default::default()
        };
        let flat = 16 * (image[1] / 4) * (image[2] / 4);
        LeNet5 {
            image,
            conv1: nn::conv2d(p / "conv1", image[0], 6, 5, same),
            conv2: nn::conv2d(p / "conv2", 6, 16, 5, same),
            fc1: nn::linear(p / "fc1", flat, 120, Default::default()),
            fc2: nn::linear(p / "fc2", 120, 84, Default::default()),
            fc3: nn::linear(p / "fc3", 84, classes, Default::default()),
        }
    }
}

impl Module for LeNet5 {
    fn forward(&self, xs: &tch::Tensor) -> tch::Tensor {
        let [c, h, w] = self.image;
        xs.view([-1, c, h, w])
            .apply(&self.conv1)
            .relu()
            .max_pool2d_default(2)
            .apply(&self.conv2)
            .relu()
            .max_pool2d_default(2)
            .flatten(1, -1)
            .apply(&self.fc1)
            .relu()
            .apply(&self.fc2)
            .relu()
            .apply(&self.fc3)
    }
}

/// A residual block: two 3×3 convolutions with batch norm, and a 1×1 projection on the skip
/// path when the shape changes.
#[derive(Debug)]
struct BasicBlock {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    conv2: nn::Conv2D,
    bn2: nn::BatchNorm,
    project: Option<(nn::Conv2D, nn::BatchNorm)>,
}

impl BasicBlock {
    fn new(p: &nn::Path, cin: i64, cout: i64, stride: i64) -> BasicBlock {
        let conv = |name: &str, i, o, k, s, pad| {
            nn::conv2d(
                p / name,
                i,
                o,
                k,
                nn::ConvConfig {
                    stride: s,
                    padding: pad,
                    bias: false,
                    ..Default::default()
                },
            )
        };
        let project = (stride != 1 || cin != cout).then(|| {
            (
                conv("proj", cin, cout, 1, stride, 0),
                nn::batch_norm2d(p / "proj_bn", cout, Default::default()),
            )
        });
        BasicBlock {
            conv1: conv("conv1", cin, cout, 3, stride, 1),
            bn1: nn::batch_norm2d(p / "bn1", cout, Default::default()),
            conv2: conv("conv2", cout, cout, 3, 1, 1),
            bn2: nn::batch_norm2d(p / "bn2", cout, Default::default()),
            project,
        }
    }
}

impl ModuleT for BasicBlock {
    fn forward_t(&self, xs: &tch::Tensor, train: bool) -> tch::Tensor {
        let y = xs
            .apply(&self.conv1)
            .apply_t(&self.bn1, train)
            .relu()
            .apply(&self.conv2)
            .apply_t(&self.bn2, train);
        let skip = match &self.project {
            Some((c, bn)) => xs.apply(c).apply_t(bn, train),
            None => xs.shallow_clone(),
        };
        (y + skip).relu()
    }
}

/// A small ResNet: a 3×3 stem, three basic blocks (16, 32, 64 channels; strides 1, 2, 2),
/// global average pooling and a linear classifier. Takes flattened images.
#[derive(Debug)]
pub struct ResNetSmall {
    image: [i64; 3],
    stem: nn::Conv2D,
    stem_bn: nn::BatchNorm,
    blocks: Vec<BasicBlock>,
    fc: nn::Linear,
}

impl ResNetSmall {
    pub fn new(p: &nn::Path, image: [i64; 3], classes: i64) -> ResNetSmall {
        let stem = nn::conv2d(
            p / "stem",
            image[0],
            16,
            3,
            nn::ConvConfig {
                padding: 1,
                bias: false,
                ..Default::default()
            },
        );
        let blocks = vec![
            BasicBlock::new(&(p / "layer1"), 16, 16, 1),
            BasicBlock::new(&(p / "layer2"), 16, 32, 2),
            BasicBlock::new(&(p / "layer3"), 32, 64, 2),
        ];
        ResNetSmall {
            image,
            stem,
            stem_bn: nn::batch_norm2d(p / "stem_bn", 16, Default::default()),
            blocks,
            fc: nn::linear(p / "fc", 64, classes, Default::default()),
        }
    }
}

impl ModuleT for ResNetSmall {
    fn forward_t(&self, xs: &tch::Tensor, train: bool) -> tch::Tensor {
        let [c, h, w] = self.image;
        let x = xs
            .view([-1, c, h, w])
            .apply(&self.stem)
            .apply_t(&self.stem_bn, train)
            .relu();
        let x = self.blocks.iter().fold(x, |x, b| b.forward_t(&x, train));
        x.adaptive_avg_pool2d([1, 1]).flatten(1, -1).apply(&self.fc)
    }
}

/// A TorchScript module trained through `tch`, switched between training and evaluation mode
/// as each call asks (batch norm and dropout inside behave as in PyTorch).
struct Scripted(std::sync::Mutex<tch::TrainableCModule>);

impl std::fmt::Debug for Scripted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scripted")
    }
}

impl ModuleT for Scripted {
    fn forward_t(&self, xs: &tch::Tensor, train: bool) -> tch::Tensor {
        let mut module = self.0.lock().expect("the scripted module");
        if train {
            module.set_train();
        } else {
            module.set_eval();
        }
        module
            .forward_ts(&[xs])
            .expect("the scripted model's forward takes one tensor")
    }
}

#[allow(unsafe_code)]
unsafe extern "C" {
    /// `src/train/scripted_buffers.cpp`: calls `f(data, name, tensor)` for each buffer.
    fn pot_module_named_buffers(
        module: *mut std::ffi::c_void,
        data: *mut std::ffi::c_void,
        f: extern "C" fn(*mut std::ffi::c_void, *const std::ffi::c_char, *mut std::ffi::c_void),
    ) -> std::ffi::c_int;
}

/// The module's buffers by dotted name, each sharing storage with the module's own.
fn named_buffers(module: &tch::TrainableCModule) -> anyhow::Result<Vec<(String, tch::Tensor)>> {
    extern "C" fn collect(
        data: *mut std::ffi::c_void,
        name: *const std::ffi::c_char,
        tensor: *mut std::ffi::c_void,
    ) {
        // SAFETY: `data` is the vector passed below, `name` a C string valid for this call,
        // and `tensor` a new at::Tensor whose ownership passes to the Rust Tensor.
        #[allow(unsafe_code)]
        unsafe {
            let out = &mut *(data as *mut Vec<(String, tch::Tensor)>);
            let name = std::ffi::CStr::from_ptr(name)
                .to_string_lossy()
                .into_owned();
            out.push((
                name,
                tch::Tensor::from_ptr(tensor as *mut torch_sys::C_tensor),
            ));
        }
    }
    // tch keeps the `torch::jit::script::Module*` as the only field of `CModule`, itself the
    // only field of `TrainableCModule`, and gives no accessor: read it as the pointer it is.
    const _: () = assert!(
        std::mem::size_of::<tch::TrainableCModule>()
            == std::mem::size_of::<*mut std::ffi::c_void>()
    );
    let mut out: Vec<(String, tch::Tensor)> = Vec::new();
    // SAFETY: the module pointer is valid while `module` is borrowed; the callback runs only
    // during the call.
    #[allow(unsafe_code)]
    let status = unsafe {
        let ptr = *(module as *const tch::TrainableCModule as *const *mut std::ffi::c_void);
        pot_module_named_buffers(ptr, &mut out as *mut _ as *mut std::ffi::c_void, collect)
    };
    anyhow::ensure!(
        status == 0,
        "listing the TorchScript module's buffers failed"
    );
    Ok(out)
}

/// Load a TorchScript module, its parameters and buffers registered under `p` (buffers as
/// non-trainable variables, so they are checkpointed too). The caller re-initialises them (see
/// [`reinitialise`]).
fn load_scripted(p: &nn::Path, file: &ScriptFile) -> anyhow::Result<Box<dyn ModuleT>> {
    let module =
        tch::TrainableCModule::load_data(&mut std::io::Cursor::new(&file.bytes), p.clone())
            .map_err(|e| anyhow::anyhow!("{} is not a TorchScript module: {e}", file.locator))?;
    for (name, buffer) in named_buffers(&module)? {
        // Checkpoints store f32; an integer buffer (batch norm's `num_batches_tracked`) counts
        // far below 2^24, so it round-trips.
        let _ = p.add(&format!("buffer_{}", name.replace('.', "_")), buffer, false);
    }
    Ok(Box::new(Scripted(std::sync::Mutex::new(module))))
}

/// Re-initialise a TorchScript model's variables from libtorch's generator (seeded from the run
/// seed by the caller), in name order, so that its `W_0` belongs to the miner's run and not to
/// whoever made the file, as PyTorch initialises its layers: trainable matrices and kernels
/// uniform in ±1/√fan_in (`Linear`, `Conv`), a normalisation layer's scale (a vector named
/// `…weight`) one, other trainable vectors (biases, shifts) zero; batch-norm statistics reset
/// (running mean and count zero, running variance one). Other buffers (fixed masks, constants)
/// stay as the file, pinned by its hash, has them.
pub fn reinitialise(vars: &std::collections::BTreeMap<String, tch::Tensor>) {
    tch::no_grad(|| {
        for (name, t) in vars {
            let mut t = t.shallow_clone();
            if !t.requires_grad() {
                if name.ends_with("_running_mean") || name.ends_with("_num_batches_tracked") {
                    let _ = t.zero_();
                } else if name.ends_with("_running_var") {
                    let _ = t.fill_(1.0);
                }
                continue;
            }
            let size = t.size();
            if size.len() >= 2 {
                let fan_in: i64 = size[1..].iter().product();
                let bound = 1.0 / (fan_in as f64).sqrt();
                let _ = t.uniform_(-bound, bound);
            } else if name.ends_with("weight") {
                let _ = t.fill_(1.0);
            } else {
                let _ = t.zero_();
            }
        }
    });
}

/// Build the model `spec` under `p` for `inputs` features (images of shape `image`, if they
/// are images) and `classes` classes.
pub fn build(
    spec: &ModelSpec,
    p: &nn::Path,
    inputs: i64,
    image: Option<[i64; 3]>,
    classes: i64,
) -> anyhow::Result<Box<dyn ModuleT>> {
    let need_image = |name: &str| -> anyhow::Result<[i64; 3]> {
        let Some(image) = image else {
            bail!("{name} needs image data; this dataset has plain feature vectors");
        };
        if image[1] < 4 || image[2] < 4 {
            bail!(
                "{name} needs images of at least 4×4, got {}×{}",
                image[1],
                image[2]
            );
        }
        Ok(image)
    };
    Ok(match spec {
        ModelSpec::Logistic => Box::new(Mlp::new(p, inputs, &[], classes)),
        ModelSpec::Mlp { hidden } => Box::new(Mlp::new(p, inputs, hidden, classes)),
        ModelSpec::LeNet5 => Box::new(LeNet5::new(p, need_image("lenet5")?, classes)),
        ModelSpec::ResNetSmall => {
            Box::new(ResNetSmall::new(p, need_image("resnet-small")?, classes))
        }
        ModelSpec::TorchScript(file) => load_scripted(p, file)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs_and_names_errors() {
        assert_eq!(
            "mlp:64,32".parse::<ModelSpec>().unwrap(),
            ModelSpec::Mlp {
                hidden: vec![64, 32]
            }
        );
        assert_eq!(
            "logistic".parse::<ModelSpec>().unwrap(),
            ModelSpec::Logistic
        );
        let e = "mlp:64,x".parse::<ModelSpec>().unwrap_err().to_string();
        assert!(e.contains("width"), "{e}");
        assert!("transformer".parse::<ModelSpec>().is_err());
        assert!("mlp:0".parse::<ModelSpec>().is_err());
    }
}
