//! StyleGAN2's `config.json`: NVlabs' `Generator` constructor arguments, the served noise mode
//! and crop, their checks, and the generator inputs (knobs) every StyleGAN2 declares.

use crate::params::decl::{Kind, Param};
use serde::{Deserialize, Serialize};

/// How the synthesis layers' noise inputs are filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NoiseMode {
    /// The checkpoint's own fixed noise buffers (`noise_const`): GenRep's choice.
    Const,
    /// Fresh noise per image, drawn from the sample's own random streams (the deterministic
    /// counterpart of NVlabs' `random`).
    Random,
    /// No noise.
    None,
}

impl NoiseMode {
    pub const ALL: [&'static str; 3] = ["const", "random", "none"];

    pub(super) fn as_str(self) -> &'static str {
        match self {
            NoiseMode::Const => "const",
            NoiseMode::Random => "random",
            NoiseMode::None => "none",
        }
    }

    pub(super) fn parse(s: &str) -> Option<Self> {
        match s {
            "const" => Some(NoiseMode::Const),
            "random" => Some(NoiseMode::Random),
            "none" => Some(NoiseMode::None),
            _ => None,
        }
    }
}

fn default_num_layers() -> usize {
    8
}
fn default_lr_multiplier() -> f64 {
    0.01
}
fn default_channel_base() -> usize {
    32768
}
fn default_channel_max() -> usize {
    512
}
fn default_noise_mode() -> NoiseMode {
    NoiseMode::Const
}

/// The mapping network's constructor arguments (NVlabs `mapping_kwargs`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MappingConfig {
    #[serde(default = "default_num_layers")]
    pub num_layers: usize,
    /// Width of the class embedding (default `w_dim`).
    #[serde(default)]
    pub embed_features: Option<usize>,
    /// Width of the hidden layers (default `w_dim`).
    #[serde(default)]
    pub layer_features: Option<usize>,
    #[serde(default = "default_lr_multiplier")]
    pub lr_multiplier: f64,
}

impl Default for MappingConfig {
    fn default() -> Self {
        Self {
            num_layers: default_num_layers(),
            embed_features: None,
            layer_features: None,
            lr_multiplier: default_lr_multiplier(),
        }
    }
}

/// The synthesis network's constructor arguments (NVlabs `synthesis_kwargs`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SynthesisConfig {
    #[serde(default = "default_channel_base")]
    pub channel_base: usize,
    #[serde(default = "default_channel_max")]
    pub channel_max: usize,
    /// Clamp of every conv output (256 in stylegan2-ada configs; none in TF-converted ones).
    #[serde(default)]
    pub conv_clamp: Option<f64>,
    /// Ignored (we compute in the model dtype); accepted because NVlabs configs carry it.
    #[serde(default)]
    pub num_fp16_res: Option<usize>,
    /// Only `skip` (StyleGAN2's generator) is supported.
    #[serde(default)]
    pub architecture: Option<String>,
}

impl Default for SynthesisConfig {
    fn default() -> Self {
        Self {
            channel_base: default_channel_base(),
            channel_max: default_channel_max(),
            conv_clamp: None,
            num_fp16_res: None,
            architecture: None,
        }
    }
}

/// `config.json` of a `stylegan2` model directory: NVlabs' `Generator` arguments plus serving
/// choices.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StyleGan2Config {
    #[serde(default)]
    pub name: Option<String>,
    pub z_dim: usize,
    #[serde(default)]
    pub c_dim: usize,
    pub w_dim: usize,
    pub img_resolution: usize,
    pub img_channels: usize,
    #[serde(default)]
    pub mapping_kwargs: MappingConfig,
    #[serde(default)]
    pub synthesis_kwargs: SynthesisConfig,
    /// The noise mode served when a request names none.
    #[serde(default = "default_noise_mode")]
    pub noise_mode: NoiseMode,
    /// A window of the synthesised square that is served (every image, grid and array): e.g.
    /// GenRep's LSUN-car crop `{"top": 64, "left": 0, "height": 384, "width": 512}`.
    #[serde(default)]
    pub crop: Option<Crop>,
}

/// A window of the synthesised image.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Crop {
    pub top: usize,
    pub left: usize,
    pub height: usize,
    pub width: usize,
}

impl StyleGan2Config {
    /// An unconditional RGB generator of NVlabs' defaults otherwise.
    fn preset(name: &str, r: usize, channel_base: usize, conv_clamp: Option<f64>) -> Self {
        Self {
            name: Some(name.into()),
            z_dim: 512,
            c_dim: 0,
            w_dim: 512,
            img_resolution: r,
            img_channels: 3,
            mapping_kwargs: MappingConfig::default(),
            synthesis_kwargs: SynthesisConfig {
                channel_base,
                conv_clamp,
                ..SynthesisConfig::default()
            },
            noise_mode: NoiseMode::Const,
            crop: None,
        }
    }

    /// stylegan2-ada-pytorch's `paper256` configuration (256 px, channel_base 16384).
    pub fn paper256() -> Self {
        Self::preset("stylegan2-paper256", 256, 16384, Some(256.0))
    }

    /// StyleGAN2 config-f at resolution `r` (channel_base 32768, no clamp: TF-converted).
    pub fn config_f(r: usize) -> Self {
        Self::preset(&format!("stylegan2-f{r}"), r, 32768, None)
    }

    /// Rejects configs NVlabs' generator could not be built from.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let r = self.img_resolution;
        if !(4..=1024).contains(&r) || !r.is_power_of_two() {
            return Err(format!(
                "img_resolution = {r}: must be a power of two in 4..=1024"
            ));
        }
        if !(self.img_channels == 1 || self.img_channels == 3) {
            return Err(format!("img_channels = {} (1 or 3)", self.img_channels));
        }
        for (field, v, lo, hi) in [
            ("z_dim", self.z_dim, 1, 1 << 14),
            ("w_dim", self.w_dim, 1, 1 << 14),
            ("c_dim", self.c_dim, 0, 1 << 16),
            (
                "mapping_kwargs.num_layers",
                self.mapping_kwargs.num_layers,
                1,
                64,
            ),
            (
                "mapping_kwargs.embed_features",
                self.mapping_kwargs.embed_features.unwrap_or(1),
                1,
                1 << 14,
            ),
            (
                "mapping_kwargs.layer_features",
                self.mapping_kwargs.layer_features.unwrap_or(1),
                1,
                1 << 14,
            ),
            (
                "synthesis_kwargs.channel_base",
                self.synthesis_kwargs.channel_base,
                4,
                1 << 24,
            ),
            (
                "synthesis_kwargs.channel_max",
                self.synthesis_kwargs.channel_max,
                1,
                1 << 14,
            ),
        ] {
            if !(lo..=hi).contains(&v) {
                return Err(format!("{field} = {v}: must be in {lo}..={hi}"));
            }
        }
        if self.synthesis_kwargs.channel_base / r == 0 {
            return Err(format!(
                "synthesis_kwargs.channel_base = {} leaves no channels at {r} px (channels at r are channel_base / r)",
                self.synthesis_kwargs.channel_base
            ));
        }
        let lr = self.mapping_kwargs.lr_multiplier;
        if !(lr > 0.0 && lr.is_finite()) {
            return Err(format!(
                "mapping_kwargs.lr_multiplier = {lr}: must be positive"
            ));
        }
        if let Some(c) = self.synthesis_kwargs.conv_clamp {
            if !(c > 0.0 && c.is_finite()) {
                return Err(format!(
                    "synthesis_kwargs.conv_clamp = {c}: must be positive (or null)"
                ));
            }
        }
        if let Some(c) = self.crop {
            let fits = |a: usize, b: usize| a.checked_add(b).is_some_and(|e| e <= r);
            if c.height == 0 || c.width == 0 || !fits(c.top, c.height) || !fits(c.left, c.width) {
                return Err(format!(
                    "crop {c:?} does not fit inside the {r}x{r} image (and must not be empty)"
                ));
            }
        }
        match self.synthesis_kwargs.architecture.as_deref() {
            None | Some("skip") => {}
            Some(a) => {
                return Err(format!(
                    "synthesis_kwargs.architecture = `{a}`: only `skip` (StyleGAN2's generator) is supported"
                ))
            }
        }
        Ok(())
    }

    /// Channels of the block at resolution `r`.
    pub(super) fn channels(&self, r: usize) -> usize {
        (self.synthesis_kwargs.channel_base / r).min(self.synthesis_kwargs.channel_max)
    }

    /// Block resolutions 4, 8, …, `img_resolution`.
    pub(super) fn resolutions(&self) -> Vec<usize> {
        (2..=self.img_resolution.trailing_zeros())
            .map(|k| 1 << k)
            .collect()
    }

    /// Rows of w the synthesis network takes: one per conv and one for the last to-RGB.
    pub fn num_ws(&self) -> usize {
        2 * self.img_resolution.trailing_zeros() as usize - 2
    }
}

/// ψ: the truncation of w toward `w_avg` (`gen_truncation`, so BigGAN and StyleGAN share the
/// name of "the generator's truncation"), the rows it applies to, and the noise mode.
pub(super) fn knobs(noise_default: NoiseMode) -> &'static [Param] {
    const PSI: Param = Param {
        name: "gen_truncation",
        aliases: &[],
        kind: Kind::Float {
            default: 1.0,
            min: -1.0,
            max: 2.0,
            min_open: false,
        },
        doc: "StyleGAN's truncation psi: w_avg + psi·(w − w_avg); 1 = none.",
    };
    const CUTOFF: Param = Param {
        name: "truncation_cutoff",
        aliases: &[],
        kind: Kind::Int {
            default: 0,
            min: 0,
            max: 64,
            limit: None,
        },
        doc: "Apply psi to the first N rows of w only (coarse layers); 0 = all rows.",
    };
    const fn noise(default: &'static str) -> Param {
        Param {
            name: "noise_mode",
            aliases: &[],
            kind: Kind::Choice {
                default,
                values: &NoiseMode::ALL,
            },
            doc: "Noise inputs: const (the checkpoint's buffers), random (drawn from the sample's own streams: still deterministic), none.",
        }
    }
    static CONST: [Param; 3] = [PSI, CUTOFF, noise("const")];
    static RANDOM: [Param; 3] = [PSI, CUTOFF, noise("random")];
    static NONE: [Param; 3] = [PSI, CUTOFF, noise("none")];
    match noise_default {
        NoiseMode::Const => &CONST,
        NoiseMode::Random => &RANDOM,
        NoiseMode::None => &NONE,
    }
}

/// The knobs every StyleGAN2 model declares (with the `const` noise default), for the registry.
pub fn family_knobs() -> &'static [Param] {
    knobs(NoiseMode::Const)
}
