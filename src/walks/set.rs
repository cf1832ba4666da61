//! The walks a server serves (`method=steer`): read from a walk file, checked against the
//! served weights, and attached to the generator — their description in its spec (what
//! `/v1/info` lists and the parameter table checks `walks=` against), their vectors in its
//! assets (what the steer method reads).
//!
//! Where they come from, first found wins: `--walks FILE`; `walks.safetensors` in the model
//! directory; the embedded model's own (shipped next to it in `models/mnist-cdcgan/`).

use super::file::WalkFile;
use super::train::Transform;
use crate::generator::{Assets, Generator};
use anyhow::{anyhow, bail, Context, Result};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// The walk file a model directory may hold next to its weights.
pub const MODEL_DIR_FILE: &str = "walks.safetensors";

/// One served walk.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct WalkSpec {
    /// `zoom`, `shift_x`, `shift_y`, `rot2d`, `color_0`, …
    pub name: String,
    /// The edit it was trained to imitate.
    #[serde(serialize_with = "transform_name")]
    pub transform: Transform,
    /// The range of its coefficient at `steer_scale=1` (`zoom`: ln 0.25 … ln 4).
    pub alpha_range: [f32; 2],
}

fn transform_name<S: serde::Serializer>(t: &Transform, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(t.name())
}

/// The walks attached to a generator.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct WalkSet {
    /// The walk file (`<embedded>/…` for the embedded model's).
    pub source: String,
    /// In the file's order: the order in which a positive draws its coefficients.
    pub walks: Vec<WalkSpec>,
    /// What made them: the file's metadata (transforms, steps, batch size, lr, seed, final
    /// loss, the weights' sha256).
    pub trained: BTreeMap<String, String>,
}

impl WalkSet {
    /// The position of walk `name`.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.walks.iter().position(|w| w.name == name)
    }

    /// The walks' names, comma-separated (for messages).
    pub fn names(&self) -> String {
        let v: Vec<&str> = self.walks.iter().map(|w| w.name.as_str()).collect();
        v.join(", ")
    }
}

/// The asset holding walk `name`'s vector (`[latent_dim]`).
pub fn asset_name(name: &str) -> String {
    format!("walk.{name}")
}

/// The transform of a walk name: a transform's name, or `color_{c}` for channel `c` of
/// `channels`.
pub fn transform_of(name: &str, channels: usize) -> Result<Transform, String> {
    if let Some(c) = name.strip_prefix("color_") {
        return match c.parse::<usize>() {
            Ok(c) if c < channels && name == format!("color_{c}") => Ok(Transform::Color),
            _ => Err(format!(
                "walk `{name}`: the generator has {channels} channel(s) (color_0 … color_{})",
                channels.saturating_sub(1)
            )),
        };
    }
    match Transform::parse(name)? {
        Transform::Color => Err("walk `color`: colour walks are named color_0, color_1, …".into()),
        t => Ok(t),
    }
}

/// Attaches the walks of `file` to `g` (its spec and assets). `source` names the file in
/// messages and in `/v1/info`.
pub fn attach(g: &mut dyn Generator, file: WalkFile, source: &str) -> Result<()> {
    let channels = g.spec().channels;
    let mut specs = Vec::with_capacity(file.names.len());
    let mut assets = (*g.info().assets).clone();
    for (i, name) in file.names.iter().enumerate() {
        let t = transform_of(name, channels).map_err(|e| anyhow!("{source}: {e}"))?;
        if specs.iter().any(|w: &WalkSpec| &w.name == name) {
            bail!("{source}: walk `{name}` is listed twice");
        }
        let (lo, hi) = t.alpha_range();
        let v: Vec<f32> = file.walks.get(i)?.to_vec1()?;
        if let Some(bad) = v.iter().position(|x| !x.is_finite()) {
            bail!("{source}: walk `{name}` has a non-finite value at [{bad}]");
        }
        assets.insert(asset_name(name), vec![v.len()], v);
        specs.push(WalkSpec {
            name: name.clone(),
            transform: t,
            alpha_range: [lo, hi],
        });
    }
    let trained = file
        .meta
        .into_iter()
        .filter(|(k, _)| k != "format" && k != "walks")
        .collect();
    let model = g.spec().name.clone();
    let info = g
        .info_mut()
        .ok_or_else(|| anyhow!("{model} cannot carry walks"))?;
    info.assets = Arc::new(assets);
    info.spec.walks = Some(WalkSet {
        source: source.to_string(),
        walks: specs,
        trained,
    });
    Ok(())
}

/// Loads and attaches the walks for a model loaded from `model` (`None`: the embedded model,
/// which [`crate::embedded::load`] loads with its own): `explicit` if given (replacing any),
/// else the model directory's [`MODEL_DIR_FILE`]. Returns where they came from, or `None`
/// when nothing was loaded here.
pub fn load_for(
    g: &mut dyn Generator,
    model: Option<&Path>,
    explicit: Option<&Path>,
) -> Result<Option<String>> {
    let (sha, dim) = (g.spec().weights_sha256.clone(), g.spec().latent_dim);
    let (file, source) = if let Some(p) = explicit {
        let f = WalkFile::load(p, &sha, dim).context("--walks")?;
        (f, p.display().to_string())
    } else if let Some(dir) = model.filter(|m| m.is_dir()) {
        let p = dir.join(MODEL_DIR_FILE);
        if !p.exists() {
            return Ok(None);
        }
        (WalkFile::load(&p, &sha, dim)?, p.display().to_string())
    } else {
        return Ok(None);
    };
    attach(g, file, &source)?;
    Ok(Some(source))
}

/// The largest per-walk scale (`walks=zoom:2`) and `steer_scale`: past 4× the trained range
/// a walk leaves what it learned.
pub const MAX_SCALE: f32 = 4.0;

/// Parses the `walks` parameter against `set`: `name[:scale]` items, comma-separated, in any
/// order (`color` = every colour walk). Returns `(position, scale)` in the set's order.
pub fn parse_walk_list(list: &str, set: &WalkSet) -> Result<Vec<(usize, f32)>, String> {
    let shown: String = list.chars().take(64).collect();
    let mut out: Vec<(usize, f32)> = Vec::new();
    for item in list.split(',').map(str::trim) {
        if item.is_empty() {
            return Err(format!("empty entry in walk list `{shown}`"));
        }
        let (name, scale) = match item.split_once(':') {
            Some((n, sc)) => {
                let v = sc
                    .parse::<f32>()
                    .ok()
                    .filter(|v| v.is_finite() && (0.0..=MAX_SCALE).contains(v))
                    .ok_or_else(|| {
                        let sc: String = sc.chars().take(16).collect();
                        format!("walk `{n}`: scale `{sc}` must be a number in [0, {MAX_SCALE}]")
                    })?;
                (n, v)
            }
            None => (item, 1.0),
        };
        let picked: Vec<usize> = if name == "color" {
            (0..set.walks.len())
                .filter(|&i| set.walks[i].transform == Transform::Color)
                .collect()
        } else {
            set.index(name).into_iter().collect()
        };
        if picked.is_empty() {
            let name: String = name.chars().take(32).collect();
            return Err(format!("no walk `{name}` (loaded walks: {})", set.names()));
        }
        for i in picked {
            if out.iter().any(|&(j, _)| j == i) {
                return Err(format!("walk `{}` is listed twice", set.walks[i].name));
            }
            out.push((i, scale));
        }
    }
    out.sort_by_key(|&(i, _)| i);
    Ok(out)
}

/// The coefficients of a `/v1/walks.png` row (and of `genrep walks measure`): `steps` evenly spaced over the walk's trained
/// range (symmetric about 0, the anchor, so the middle column of an odd row is the anchor),
/// times `steer_scale`.
pub fn sweep(range: [f32; 2], steps: usize, scale: f32) -> Vec<f32> {
    let m = range[0].abs().max(range[1].abs()) as f64 * scale as f64;
    (0..steps)
        .map(|j| (-m + 2.0 * m * j as f64 / (steps - 1) as f64) as f32)
        .collect()
}

/// What a server without walks answers to `method=steer`.
pub fn no_walks_message(model: &str) -> String {
    format!(
        "{model} has no walks loaded: train them with `genrep walks train --model DIR --out \
         walks.safetensors`, then serve with `--walks walks.safetensors` (or put the file in the \
         model directory as {MODEL_DIR_FILE})"
    )
}

/// A view's walk vectors by position in the set (for the steer method).
pub fn vectors<'a>(set: &WalkSet, assets: &'a Assets) -> Vec<&'a [f32]> {
    set.walks
        .iter()
        .map(|w| {
            assets
                .get(&asset_name(&w.name))
                .expect("attached with the set")
                .1
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> WalkSet {
        let w = |name: &str, t: Transform| WalkSpec {
            name: name.into(),
            transform: t,
            alpha_range: [-1.0, 1.0],
        };
        WalkSet {
            source: "t".into(),
            walks: vec![
                w("zoom", Transform::Zoom),
                w("shift_x", Transform::ShiftX),
                w("color_0", Transform::Color),
                w("color_1", Transform::Color),
            ],
            trained: Default::default(),
        }
    }

    #[test]
    fn sweeps_are_symmetric_and_scaled() {
        let a = sweep([0.25f32.ln(), 4f32.ln()], 9, 1.0);
        assert_eq!(a.len(), 9);
        assert!((a[0] + 4f32.ln()).abs() < 1e-6 && (a[8] - 4f32.ln()).abs() < 1e-6);
        assert_eq!(a[4], 0.0);
        assert_eq!(sweep([-1.0, 1.0], 2, 0.5), [-0.5, 0.5]);
    }

    #[test]
    fn walk_lists() {
        let s = set();
        assert_eq!(
            parse_walk_list("shift_x:0.5,zoom", &s).unwrap(),
            [(0, 1.0), (1, 0.5)]
        );
        assert_eq!(
            parse_walk_list("color:2", &s).unwrap(),
            [(2, 2.0), (3, 2.0)]
        );
        let e = parse_walk_list("tilt", &s).unwrap_err();
        assert!(
            e.contains("no walk `tilt`") && e.contains("zoom, shift_x"),
            "{e}"
        );
        assert!(parse_walk_list("zoom,zoom:2", &s)
            .unwrap_err()
            .contains("listed twice"));
        assert!(parse_walk_list("color_0,color", &s)
            .unwrap_err()
            .contains("listed twice"));
        for bad in [
            "zoom:-1",
            "zoom:5",
            "zoom:nan",
            "zoom:",
            "zoom,,shift_x",
            "",
        ] {
            assert!(parse_walk_list(bad, &s).is_err(), "{bad}");
        }
    }

    #[test]
    fn walk_names_map_to_transforms() {
        assert_eq!(transform_of("zoom", 1), Ok(Transform::Zoom));
        assert_eq!(transform_of("color_2", 3), Ok(Transform::Color));
        assert!(transform_of("color_1", 1)
            .unwrap_err()
            .contains("1 channel"));
        assert!(transform_of("color_01", 3).is_err());
        assert!(transform_of("color", 3).unwrap_err().contains("color_0"));
        assert!(transform_of("tilt", 3)
            .unwrap_err()
            .contains("unknown transform"));
    }
}
