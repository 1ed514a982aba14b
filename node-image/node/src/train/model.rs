//! Built-in models, described by a short string a task names (`mlp:64,32`).

use anyhow::{Context, bail};
use tch::nn::{self, Module};

/// What to build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSpec {
    /// Logistic regression: one linear layer.
    Logistic,
    /// A multi-layer perceptron with ReLU between the given hidden widths.
    Mlp { hidden: Vec<i64> },
}

impl std::str::FromStr for ModelSpec {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<ModelSpec> {
        match s.split_once(':') {
            None if s == "logistic" => Ok(ModelSpec::Logistic),
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
            _ => bail!("unknown model {s:?}: expected `logistic` or `mlp:W1,W2,...`"),
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

/// Build the model `spec` under `p`.
pub fn build(spec: &ModelSpec, p: &nn::Path, inputs: i64, classes: i64) -> Box<dyn Module> {
    match spec {
        ModelSpec::Logistic => Box::new(Mlp::new(p, inputs, &[], classes)),
        ModelSpec::Mlp { hidden } => Box::new(Mlp::new(p, inputs, hidden, classes)),
    }
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
