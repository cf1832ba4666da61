//! The deployment files (docker/, docker/k8s/) checked by `tests/check_deploy.py`: Kubernetes
//! manifests against the Kubernetes JSON schemas (`kubernetes-validate`, installed by
//! tests/run_all.sh), and what genrep needs of the manifests, the compose file and the
//! Dockerfiles (probes, grace periods longer than the drain, non-root, locked builds).

mod common;

#[test]
fn deployment_files_validate() {
    let python = common::python();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/check_deploy.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(
        out.status.success(),
        "deployment checks failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("validates (Kubernetes"), "{text}");
}
