//! `cnn remote`: the same output as `cnn classify`, computed by a running server.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

const BOUNDARY: &str = "----cnn-cli-7c1a5e";

fn multipart(field: &str, files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, bytes) in files {
        // Quotes and line breaks would end the header early; the server echoes the name only.
        let safe: String = name
            .chars()
            .map(|c| if c == '"' || c.is_control() { '_' } else { c })
            .collect();
        body.extend(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{safe}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend(b"\r\n");
    }
    body.extend(format!("--{BOUNDARY}--\r\n").bytes());
    body
}

/// Sends `paths` to `url` and prints one row (or JSON value) per file.
pub fn classify(url: &str, paths: &[PathBuf], json_out: bool, jsonl: bool) -> Result<ExitCode> {
    let mut files = Vec::new();
    for p in paths {
        let bytes = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
        files.push((p.display().to_string(), bytes));
    }
    let base = url.trim_end_matches('/');
    let (endpoint, field) = if files.len() == 1 {
        ("classify", "file")
    } else {
        ("classify/batch", "files")
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into();
    let mut res = agent
        .post(format!("{base}/{endpoint}"))
        .header(
            "Content-Type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .send(&multipart(field, &files)[..])
        .with_context(|| format!("cannot reach the server at {base}"))?;
    let status = res.status().as_u16();
    let text = res
        .body_mut()
        .read_to_string()
        .context("reading the server's answer")?;
    let body: Value = serde_json::from_str(&text)
        .with_context(|| format!("the server answered {status} with something that is not JSON"))?;
    if status != 200 {
        bail!(
            "the server answered {status}: {}",
            body["detail"].as_str().unwrap_or(&text)
        );
    }
    let answers: Vec<Value> = if files.len() == 1 {
        vec![body]
    } else {
        body["results"].as_array().cloned().unwrap_or_default()
    };

    let mut report = crate::Report::new(std::io::stdout().lock(), json_out, jsonl);
    for ((name, _), a) in files.iter().zip(answers) {
        let value = match a.get("error") {
            Some(e) => json!({"file": name, "error": e}),
            None => {
                json!({"file": name, "prediction": a["prediction"], "top_k": a["top_3_predictions"]})
            }
        };
        report.push(value)?;
    }
    Ok(report.finish()?)
}
