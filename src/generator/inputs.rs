//! Checking latents and class conditioning against a generator, before they reach it: one set of
//! rules (and messages) for `POST /v1/generate` and `genrep generate`. Messages name the input
//! the way the caller spells it (`classes` in JSON, `--class` on the command line).

use super::{ClassInput, GeneratorSpec};

/// Class conditioning as a user gave it.
#[derive(Debug, Clone)]
pub enum ClassArg {
    Absent,
    /// One class id per latent.
    Ids(Vec<i64>),
    /// Soft class vectors: `rows` × `cols` values, row-major.
    Vectors {
        rows: usize,
        cols: usize,
        values: Vec<f32>,
    },
}

/// Checks `n` latents of `dim` values (`values` row-major): `dim` must be the generator's latent
/// size and every value finite. `what` names the input in messages.
pub fn check_latents(
    spec: &GeneratorSpec,
    n: usize,
    dim: usize,
    values: &[f32],
    what: &str,
) -> Result<(), String> {
    if n == 0 || dim != spec.latent_dim || values.len() != n * dim {
        return Err(format!(
            "{what} has shape [{n}, {dim}], expected [B, {}] with B >= 1 (latent_dim of {})",
            spec.latent_dim, spec.name
        ));
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(format!(
            "{what} row {} contains a non-finite value",
            i / dim
        ));
    }
    Ok(())
}

/// The conditioning of `n` latents: required (ids or vectors) for conditional generators,
/// forbidden for unconditional ones; ids in range, vectors `[n, num_classes]` and finite.
/// `ids_name`/`vectors_name` name the inputs in messages.
pub fn class_input(
    spec: &GeneratorSpec,
    n: usize,
    arg: ClassArg,
    ids_name: &str,
    vectors_name: &str,
) -> Result<ClassInput, String> {
    let nc = spec.num_classes;
    match (arg, nc) {
        (ClassArg::Absent, 0) => Ok(ClassInput::None),
        (ClassArg::Absent, _) => Err(format!(
            "{} is conditional on {nc} classes: give {ids_name} (ids) or {vectors_name}",
            spec.name
        )),
        (_, 0) => Err(format!(
            "{} is unconditional: omit {ids_name}/{vectors_name}",
            spec.name
        )),
        (ClassArg::Ids(ids), _) => {
            if ids.len() != n {
                return Err(format!(
                    "{ids_name} has {} class ids for {n} latents",
                    ids.len()
                ));
            }
            if let Some(bad) = ids.iter().find(|&&v| v < 0 || v as usize >= nc) {
                return Err(format!(
                    "{ids_name} contains {bad}, out of range 0..={}",
                    nc - 1
                ));
            }
            Ok(ClassInput::Ids(ids.iter().map(|&v| v as u32).collect()))
        }
        (ClassArg::Vectors { rows, cols, values }, _) => {
            if rows != n || cols != nc || values.len() != rows * cols {
                return Err(format!(
                    "{vectors_name} has shape [{rows}, {cols}], expected class vectors [{n}, {nc}]"
                ));
            }
            if values.iter().any(|x| !x.is_finite()) {
                return Err(format!("{vectors_name} contains a non-finite value"));
            }
            Ok(ClassInput::Soft(values))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(nc: usize) -> GeneratorSpec {
        GeneratorSpec::new("g", "cdcgan", 2, nc, 1, 4)
    }

    #[test]
    fn rules_and_messages() {
        let s = spec(3);
        assert!(check_latents(&s, 1, 2, &[0.0, 1.0], "z").is_ok());
        assert!(check_latents(&s, 1, 1, &[0.0], "z")
            .unwrap_err()
            .contains("latent_dim"));
        assert!(check_latents(&s, 1, 2, &[f32::NAN, 0.0], "z")
            .unwrap_err()
            .contains("non-finite"));
        let e = class_input(&s, 1, ClassArg::Absent, "classes", "class_vectors").unwrap_err();
        assert!(e.contains("conditional"), "{e}");
        let e = class_input(&s, 1, ClassArg::Ids(vec![3]), "classes", "class_vectors").unwrap_err();
        assert!(e.contains("out of range 0..=2"), "{e}");
        let v = ClassArg::Vectors {
            rows: 1,
            cols: 2,
            values: vec![0.5, 0.5],
        };
        assert!(class_input(&s, 1, v, "--class", "--class")
            .unwrap_err()
            .contains("[1, 3]"));
        let e = class_input(
            &spec(0),
            1,
            ClassArg::Ids(vec![0]),
            "classes",
            "class_vectors",
        )
        .unwrap_err();
        assert!(e.contains("unconditional"), "{e}");
    }
}
