//! The converters' refusals that need no torch: StyleGAN2's (TF-era pickles, pickles referencing
//! anything but tensors, foreign files, channel widths genrep cannot describe) and BigGAN-PyTorch's
//! (configs it cannot run, missing, extra and misshapen tensors), run with the test environment's
//! Python (`tests/run_all.sh` installs it; no PyTorch in CI).

mod common;

use std::process::Command;

#[test]
fn stylegan2_converter_refuses_what_it_cannot_convert_without_executing_it() {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/tools/convert_stylegan2_errors.py"
    );
    let out = common::run_ok(
        Command::new(common::python()).arg(script),
        "convert_stylegan2 error cases",
    );
    assert!(out.trim_end().ends_with("ok"), "{out}");
    assert!(out.contains("legacy.py"), "{out}");
}

#[test]
fn bigbigan_converter_names_missing_extra_and_misshapen_tensors_and_bad_configs() {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/tools/convert_bigbigan_errors.py"
    );
    let out = common::run_ok(
        Command::new(common::python()).arg(script),
        "convert_bigbigan error cases",
    );
    assert!(out.trim_end().ends_with("ok"), "{out}");
    assert!(
        out.contains("blocks.3.1.gamma") && out.contains("only ReLU"),
        "{out}"
    );
}
