//! Records the source revision for `synwatch_build_info` (`git rev-parse`, or `unknown` when
//! building outside a git checkout, for example from a source package).

use std::path::Path;
use std::process::Command;

fn main() {
    let revision = std::env::var("SYNWATCH_REVISION").ok().filter(|value| !value.is_empty()).unwrap_or_else(|| {
        Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string())
            .unwrap_or_else(|| "unknown".to_string())
    });
    println!("cargo:rustc-env=SYNWATCH_REVISION={revision}");
    println!("cargo:rerun-if-env-changed=SYNWATCH_REVISION");
    for path in ["../../.git/HEAD", "../../.git/refs/heads", "../../.git/packed-refs"] {
        if Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
