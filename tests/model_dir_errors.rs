//! A broken model directory gives an error that names the problem, never a panic.

use candle_core::{DType, Device};
use genrep::generator::{load_model_dir, BigGanDeep, ClassInput, GeneratorError, Knobs};
use std::path::Path;

fn copy_fixture() -> tempfile::TempDir {
    copy_model("tests/fixtures/biggan-tiny")
}

/// A writable copy of a committed model directory.
fn copy_model(rel: &str) -> tempfile::TempDir {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    dir
}

/// Sets one field of `dir/config.json`.
fn set_config(dir: &Path, key: &str, value: &serde_json::Value) {
    let p = dir.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    cfg[key] = value.clone();
    std::fs::write(&p, cfg.to_string()).unwrap();
}

fn load_err(dir: &Path) -> String {
    match load_model_dir(dir, &Device::Cpu, DType::F32) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_files() {
    let d = copy_fixture();
    std::fs::remove_file(d.path().join("model.safetensors")).unwrap();
    let e = load_err(d.path());
    assert!(
        e.contains("model.safetensors") && e.contains("cannot read"),
        "{e}"
    );
    std::fs::remove_file(d.path().join("config.json")).unwrap();
    let e = load_err(d.path());
    assert!(e.contains("config.json"), "{e}");
}

#[test]
fn truncated_safetensors() {
    let d = copy_fixture();
    let p = d.path().join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(d.path());
    assert!(
        e.contains("model.safetensors") && e.contains("safetensors"),
        "{e}"
    );
}

#[test]
fn wrong_config_values() {
    let cases: &[(&str, serde_json::Value, &str)] = &[
        ("architecture", serde_json::json!("stylegan9"), "stylegan9"),
        ("channel_width", serde_json::json!(16), "has shape"),
        ("num_classes", serde_json::json!(7), "embeddings.weight"),
        ("layers", serde_json::json!([[false, 8, 8]]), "layers[0]"),
        ("output_dim", serde_json::json!(64), "output_dim"),
        ("n_stats", serde_json::json!("many"), "n_stats"),
    ];
    for (key, value, needle) in cases {
        let d = copy_fixture();
        set_config(d.path(), key, value);
        let e = load_err(d.path());
        assert!(e.contains(needle), "{key}={value}: {e}");
    }
}

#[test]
fn missing_tensor_is_named() {
    let d = copy_fixture();
    let p = d.path().join("model.safetensors");
    let tensors = candle_core::safetensors::load(&p, &Device::Cpu).unwrap();
    let kept: std::collections::HashMap<_, _> = tensors
        .into_iter()
        .filter(|(k, _)| k != "generator.layers.2.bn_1.running_vars")
        .collect();
    candle_core::safetensors::save(&kept, &p).unwrap();
    match load_model_dir(d.path(), &Device::Cpu, DType::F32) {
        Err(GeneratorError::MissingTensor(n)) => {
            assert_eq!(n, "generator.layers.2.bn_1.running_vars")
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("should fail"),
    }
}

#[test]
fn bad_inputs_are_errors() {
    let d = copy_fixture();
    let g = load_model_dir(d.path(), &Device::Cpu, DType::F32).unwrap();
    let z = vec![0.1f32; 16];
    for (classes, t, needle) in [
        (ClassInput::Ids(vec![5]), 1.0, "out of range"),
        (ClassInput::None, 1.0, "conditional"),
        (ClassInput::Ids(vec![0, 1]), 1.0, "2 class ids"),
        (ClassInput::Ids(vec![0]), 0.0, "truncation"),
        (ClassInput::Ids(vec![0]), 1.5, "truncation"),
    ] {
        let e = g
            .generate(&z, &classes, &BigGanDeep::truncation(t))
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle), "{needle}: {e}");
    }
    let e = g
        .generate(&z[..15], &ClassInput::Ids(vec![0]), &Knobs::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("latent_dim"), "{e}");
    let mut zn = z.clone();
    zn[3] = f32::NAN;
    let e = g
        .generate(&zn, &ClassInput::Ids(vec![0]), &Knobs::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("z[3]"), "{e}");
}

fn copy_stylegan2() -> tempfile::TempDir {
    copy_model("tests/fixtures/stylegan2/sg2-32-uncond")
}

/// A StyleGAN2 directory whose config lies or whose weights lack a tensor fails at load,
/// naming the field or the tensor (never a panic, never a huge allocation).
#[test]
fn stylegan2_configs_that_lie_are_named() {
    let cases: &[(&str, serde_json::Value, &str)] = &[
        ("img_resolution", serde_json::json!(4096), "img_resolution"),
        ("img_resolution", serde_json::json!(48), "power of two"),
        ("img_resolution", serde_json::json!(64), "synthesis.b64"),
        ("w_dim", serde_json::json!(33), "has shape"),
        ("z_dim", serde_json::json!(0), "z_dim"),
        ("img_channels", serde_json::json!(4), "img_channels"),
        ("noise_mode", serde_json::json!("loud"), "noise_mode"),
        (
            "crop",
            serde_json::json!({"top": 20, "left": 0, "height": 16, "width": 32}),
            "does not fit",
        ),
        (
            "mapping_kwargs",
            serde_json::json!({"num_layers": 1000}),
            "num_layers",
        ),
        (
            "synthesis_kwargs",
            serde_json::json!({"channel_base": 2048, "channel_max": 64, "architecture": "resnet"}),
            "only `skip`",
        ),
        (
            "synthesis_kwargs",
            serde_json::json!({"channel_base": 2048, "channel_max": 32}),
            "has shape",
        ),
    ];
    for (key, value, needle) in cases {
        let d = copy_stylegan2();
        set_config(d.path(), key, value);
        let e = load_err(d.path());
        assert!(e.contains(needle), "{key}={value}: {e}");
    }
    let d = copy_stylegan2();
    let p = d.path().join("model.safetensors");
    let tensors = candle_core::safetensors::load(&p, &Device::Cpu).unwrap();
    let kept: std::collections::HashMap<_, _> = tensors
        .into_iter()
        .filter(|(k, _)| k != "synthesis.b16.conv0.affine.weight")
        .collect();
    candle_core::safetensors::save(&kept, &p).unwrap();
    match load_model_dir(d.path(), &Device::Cpu, DType::F32) {
        Err(GeneratorError::MissingTensor(n)) => assert_eq!(n, "synthesis.b16.conv0.affine.weight"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("should fail"),
    }
}

/// Malformed rosinality checkpoints given to `--model` (made by
/// `tools/make_rosinality_error_fixtures.py`): each refused at load with a message naming the
/// problem, never a panic or an allocation the file cannot back.
#[test]
fn malformed_rosinality_checkpoints_are_named() {
    let bad = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/stylegan2-pt/bad");
    for (file, want) in [
        ("no-g-ema.pt", "no 'g_ema'"),
        ("no-mapping.pt", "no mapping layers"),
        ("missing-tensor.pt", "tensor `input.input` is missing"),
        (
            "bad-conv-shape.pt",
            "`conv1.conv.weight` has shape [8, 8, 3, 3]",
        ),
        ("integer-tensor.pt", "tensor `style.1.weight` has dtype I64"),
        ("too-many-blocks.pt", "resolutions past 1024"),
        ("lying-shape.pt", "claims shape [60000, 60000]"),
        ("plain-zip.pt", "not a readable torch.save zip checkpoint"),
        ("legacy-format.pt", "tools/convert_stylegan2.py"),
    ] {
        let e = match genrep::generator::load_model(&bad.join(file), &Device::Cpu, DType::F32) {
            Ok(_) => panic!("{file} should be refused"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains(want), "{file}: {e}");
        if file != "legacy-format.pt" {
            assert!(e.contains(file), "{file}: the message names the file: {e}");
        }
    }
    // A real checkpoint cut short.
    let pt =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/stylegan2-pt/sg2-32-uncond.pt");
    let bytes = std::fs::read(&pt).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join("cut.pt");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = genrep::generator::load_model(&cut, &Device::Cpu, DType::F32)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("cut.pt") && e.contains("not a readable"), "{e}");
    // Neither a directory nor a file.
    let e = genrep::generator::load_model(&bad.join("absent.pt"), &Device::Cpu, DType::F32)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("absent.pt") && e.contains("no such file"), "{e}");
}

/// A BigGAN-PyTorch directory whose config lies or whose weights lack a tensor fails at load,
/// naming the field or the tensor.
#[test]
fn biggan_pytorch_configs_that_lie_are_named() {
    let cases: &[(&str, serde_json::Value, &str)] = &[
        ("resolution", serde_json::json!(48), "resolution = 48"),
        ("resolution", serde_json::json!(64), "has shape"),
        ("G_ch", serde_json::json!(0), "G_ch"),
        ("G_ch", serde_json::json!(8), "has shape"),
        (
            "dim_z",
            serde_json::json!(3),
            "shorter than its 4 hierarchical chunks",
        ),
        ("dim_z", serde_json::json!(1 << 20), "dim_z"),
        ("G_attn", serde_json::json!("sixteen"), "not a resolution"),
        ("G_attn", serde_json::json!("32"), "blocks.2.1.theta.weight"),
        ("n_classes", serde_json::json!(5), "shared.weight"),
        (
            "unconditional_class",
            serde_json::json!(4),
            "unconditional_class = 4",
        ),
        ("G_activation", serde_json::json!("SiLU"), "only ReLU"),
        ("norm_style", serde_json::json!("gn"), "norm_style"),
        ("mybn", serde_json::json!(true), "mybn"),
        ("hier", serde_json::json!(false), "has shape"),
        ("BN_eps", serde_json::json!(-1.0), "BN_eps"),
    ];
    for (key, value, needle) in cases {
        let d = copy_model("tests/fixtures/bigbigan/bbg-32");
        set_config(d.path(), key, value);
        let e = load_err(d.path());
        assert!(e.contains(needle), "{key}={value}: {e}");
    }
    let d = copy_model("tests/fixtures/bigbigan/bbg-32");
    let p = d.path().join("model.safetensors");
    let tensors = candle_core::safetensors::load(&p, &Device::Cpu).unwrap();
    let kept: std::collections::HashMap<_, _> = tensors
        .into_iter()
        .filter(|(k, _)| k != "blocks.1.0.bn2.stored_var")
        .collect();
    candle_core::safetensors::save(&kept, &p).unwrap();
    match load_model_dir(d.path(), &Device::Cpu, DType::F32) {
        Err(GeneratorError::MissingTensor(n)) => assert_eq!(n, "blocks.1.0.bn2.stored_var"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("should fail"),
    }
}
