//! The shipped walks do what they are named for, measured on the embedded model with
//! `genrep walks measure` (256 anchors, 9 coefficients over each walk's range): the zoom walk
//! spreads the ink, the shift walks move its centroid and the rotation walk turns its axis the
//! way the trained edit does, the colour walk moves the mean intensity. A walk that does nothing
//! has a Spearman ρ near 0 and fails.

use std::process::Command;

fn measure() -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_genrep"))
        .args(["walks", "measure", "--anchors", "256", "--steps", "9"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_embedded_walks_do_what_they_are_named_for() {
    let report = measure();
    assert_eq!(report["walks"], "<embedded>/walks.safetensors");
    let effects = report["effects"].as_array().unwrap();
    let get = |name: &str| {
        effects
            .iter()
            .find(|e| e["walk"] == name)
            .unwrap_or_else(|| panic!("no walk `{name}` in {report:#}"))
    };
    for name in ["zoom", "shift_x", "shift_y", "rot2d", "color_0"] {
        let e = get(name);
        let rho = e["spearman"].as_f64().unwrap();
        let (slope, edit_slope) = (
            e["slope"].as_f64().unwrap(),
            e["edit_slope"].as_f64().unwrap(),
        );
        eprintln!(
            "{name}: {} rho {rho:.3} slope {slope:.3} (the edit: rho {:.3}, slope {edit_slope:.3})",
            e["statistic"],
            e["edit_spearman"].as_f64().unwrap()
        );
        // Monotone in the edit's direction.
        assert!(
            rho * edit_slope.signum() > 0.9,
            "{name}: Spearman {rho:.3} against the edit's direction {edit_slope:.3}: {e:#}"
        );
        assert!(
            slope * edit_slope > 0.0,
            "{name}: slope {slope} has the wrong sign (edit {edit_slope})"
        );
    }
    // The shifts move the centroid by a visible amount over their range (±1: the edit moves it
    // by about ±11 px at 28 px).
    for name in ["shift_x", "shift_y"] {
        let e = get(name);
        let m = e["walk_means"].as_array().unwrap();
        let moved = m.last().unwrap().as_f64().unwrap() - m[0].as_f64().unwrap();
        assert!(
            moved.abs() > 1.0,
            "{name} moves the centroid {moved:.2} px: {e:#}"
        );
    }
}
