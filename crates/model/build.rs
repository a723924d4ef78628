//! Embeds the shipped record when `assets/model.safetensors` exists, so binaries serve the
//! trained model from any working directory; a checkout without it still builds.

fn main() {
    let record = std::path::Path::new("../../assets/model.safetensors");
    println!("cargo::rerun-if-changed=../../assets/model.safetensors");
    println!("cargo::rustc-check-cfg=cfg(shipped_record)");
    if record.is_file() {
        println!("cargo::rustc-cfg=shipped_record");
    }
}
