//! `cnn remote`: the same output as `cnn classify`, computed by a running server.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

const BOUNDARY: &str = "----cnn-cli-7c1a5e";

/// Files per batch when the server does not say (its own default `--max-files`).
const DEFAULT_MAX_FILES: usize = 64;

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

/// A running server, reached over HTTP.
struct Server {
    base: String,
    agent: ureq::Agent,
}

impl Server {
    fn new(url: &str) -> Self {
        Self {
            base: url.trim_end_matches('/').to_string(),
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(120)))
                .build()
                .into(),
        }
    }

    /// The most files the server takes in one batch: the `maxItems` its OpenAPI document
    /// states (its `--max-files`), or its default when the document does not say.
    fn max_files(&self) -> usize {
        self.agent
            .get(format!("{}/openapi.json", self.base))
            .call()
            .ok()
            .filter(|res| res.status() == 200)
            .and_then(|mut res| res.body_mut().read_to_string().ok())
            .and_then(|text| serde_json::from_str::<Value>(&text).ok())
            .and_then(|doc| {
                doc["components"]["schemas"]["BatchForm"]["properties"]["files"]["maxItems"]
                    .as_u64()
            })
            .map_or(DEFAULT_MAX_FILES, |n| (n as usize).max(1))
    }

    /// Posts `files` (one to `/classify`, several to `/classify/batch`) and returns one answer
    /// per file, in order; fails on any answer that does not account for every file sent.
    fn classify(&self, files: &[(String, Vec<u8>)]) -> Result<Vec<Value>> {
        let (endpoint, field) = if files.len() == 1 {
            ("classify", "file")
        } else {
            ("classify/batch", "files")
        };
        let mut res = self
            .agent
            .post(format!("{}/{endpoint}", self.base))
            .header(
                "Content-Type",
                format!("multipart/form-data; boundary={BOUNDARY}"),
            )
            .send(&multipart(field, files)[..])
            .with_context(|| format!("cannot reach the server at {}", self.base))?;
        let status = res.status().as_u16();
        let text = res
            .body_mut()
            .read_to_string()
            .context("reading the server's answer")?;
        let body: Value = serde_json::from_str(&text).with_context(|| {
            format!("the server answered {status} with something that is not JSON")
        })?;
        if status != 200 {
            bail!(
                "the server answered {status}: {}",
                body["detail"].as_str().unwrap_or(&text)
            );
        }
        let answers = if files.len() == 1 {
            vec![body]
        } else {
            match body["results"].as_array() {
                Some(results) => results.clone(),
                None => bail!("the server's answer has no \"results\" list: {text}"),
            }
        };
        if answers.len() != files.len() {
            bail!(
                "sent {} files but the server answered for {}",
                files.len(),
                answers.len()
            );
        }
        for ((name, _), a) in files.iter().zip(&answers) {
            if a.get("error").is_none()
                && (!a["prediction"].is_object() || !a["top_3_predictions"].is_array())
            {
                bail!("the server's answer for {name} has neither a prediction nor an error: {a}");
            }
        }
        Ok(answers)
    }
}

/// Sends the files named in `paths` (directories walked, as `cnn classify` does) to `url` in
/// batches the server accepts, and prints one row (or JSON value) per file.
pub fn classify(url: &str, paths: &[PathBuf], json_out: bool, jsonl: bool) -> Result<ExitCode> {
    let mut files = Vec::new();
    crate::collect(paths, &mut files).context("cannot list input files")?;
    let server = Server::new(url);
    let max_files = server.max_files();
    let mut report = crate::Report::new(std::io::stdout().lock(), json_out, jsonl);
    for chunk in files.chunks(max_files) {
        // A file that cannot be read is reported in its place, as `cnn classify` does.
        let mut readable = Vec::new();
        let mut unreadable = Vec::new();
        for (i, path) in chunk.iter().enumerate() {
            let name = path.display().to_string();
            match std::fs::read(path) {
                Ok(bytes) => readable.push((name, bytes)),
                Err(e) => unreadable.push((i, json!({"file": name, "error": e.to_string()}))),
            }
        }
        let mut answers = if readable.is_empty() {
            Vec::new()
        } else {
            server.classify(&readable)?
        }
        .into_iter()
        .zip(readable.iter().map(|(name, _)| name));
        let mut unreadable = unreadable.into_iter().peekable();
        for i in 0..chunk.len() {
            let value = match unreadable.next_if(|(at, _)| *at == i) {
                Some((_, failed)) => failed,
                None => {
                    let (a, name) = answers.next().expect("one answer per readable file");
                    match a.get("error") {
                        Some(e) => json!({"file": name, "error": e}),
                        None => {
                            json!({"file": name, "prediction": a["prediction"], "top_k": a["top_3_predictions"]})
                        }
                    }
                }
            };
            report.push(value)?;
        }
    }
    Ok(report.finish()?)
}
